"""The command role of the root, and the chain walk that checks only the newest root's expiry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ota.errors import RootRefused
from ota.keys import SigningKey
from ota.root import load_root, parse_root, root_signed, sign_root, update_root
from ota.trust_file import apply_root_chain, load_trust_store
from protocol.events import RefusalReason
from tests.ota.ota_forge import NOW
from tests.ota.test_ota_root import DAY, document, keys, signed_part


def with_commands(signed: dict[str, Any], command: list[SigningKey], threshold: int = 1) -> dict:
    """`signed` with a command role naming `command`."""
    out = {**signed, "keys": dict(signed["keys"]), "roles": dict(signed["roles"])}
    for key in command:
        out["keys"][key.keyid] = key.public_key().to_hex()
    out["roles"]["command"] = {"keyids": [k.keyid for k in command], "threshold": threshold}
    return out


@pytest.fixture
def root_keys() -> list[SigningKey]:
    return keys(1)


@pytest.fixture
def release() -> list[SigningKey]:
    return keys(1)


@pytest.fixture
def command() -> list[SigningKey]:
    return keys(2)


def test_a_root_with_a_command_role_gives_its_keys_and_threshold(root_keys, release, command):
    signed = with_commands(signed_part(1, root_keys, release), command, threshold=2)
    store = load_root(document(signed, root_keys), NOW).trust_store()
    assert set(store.command_keys) == {k.keyid for k in command}
    assert store.command_threshold == 2


def test_a_root_from_before_command_keys_still_verifies_and_lists_none(root_keys, release):
    # hand-signed without a command role: the bytes a device already holds
    root = load_root(document(signed_part(1, root_keys, release), root_keys), NOW)
    assert root.signed.roles.command is None
    assert root.trust_store().command_keys == {}
    # the model gives back the exact canonical bytes that were signed
    assert b'"command"' not in root.signed.canonical_bytes()


def test_a_command_role_added_after_signing_is_refused(root_keys, release, command):
    plain = signed_part(1, root_keys, release)
    doc = json.loads(document(plain, root_keys))
    doc["signed"] = with_commands(plain, command)  # the old signatures, a new command role
    with pytest.raises(RootRefused) as refused:
        parse_root(json.dumps(doc).encode())
    assert refused.value.reason is RefusalReason.ROOT_THRESHOLD_NOT_MET


def test_a_command_role_naming_an_unlisted_key_is_malformed(root_keys, release, command):
    signed = with_commands(signed_part(1, root_keys, release), command)
    del signed["keys"][command[0].keyid]
    with pytest.raises(RootRefused) as refused:
        parse_root(document(signed, root_keys))
    assert refused.value.reason is RefusalReason.MALFORMED_ROOT


def test_sign_root_and_root_signed_carry_the_command_role(root_keys, release, command):
    signed = root_signed(
        version=1,
        expires=NOW + DAY,
        root_keys=[k.public_key() for k in root_keys],
        root_threshold=1,
        release_keys=[k.public_key() for k in release],
        release_threshold=1,
        command_keys=[k.public_key() for k in command],
        command_threshold=1,
    )
    root = load_root(sign_root(signed, root_keys), NOW)
    assert root.signed.roles.command is not None
    assert root.signed.roles.command.keyids == tuple(k.keyid for k in command)


def test_an_intermediate_root_may_have_expired_on_the_way(root_keys, release, command):
    v1 = load_root(document(signed_part(1, root_keys, release, expires=NOW + DAY), root_keys), NOW)
    stale = document(signed_part(2, root_keys, release, expires=NOW - 30 * DAY), root_keys)
    assert update_root(v1, stale, NOW, check_expiry=False).version == 2
    with pytest.raises(RootRefused) as refused:
        update_root(v1, stale, NOW)
    assert refused.value.reason is RefusalReason.EXPIRED


def chain_file(tmp_path: Path, root_keys, release, expires=NOW - 60 * DAY) -> Path:
    path = tmp_path / "trust.json"
    path.write_bytes(document(signed_part(1, root_keys, release, expires=expires), root_keys))
    return path


def test_a_device_offline_past_an_intermediate_expiry_reaches_the_newest_root(
    tmp_path, root_keys, release, command
):
    path = chain_file(tmp_path, root_keys, release)
    v2 = document(signed_part(2, root_keys, release, expires=NOW - 30 * DAY), root_keys)
    v3 = document(
        with_commands(signed_part(3, root_keys, release, expires=NOW + 300 * DAY), command),
        root_keys,
    )
    assert apply_root_chain(path, [v2, v3], NOW) == 3
    assert path.read_bytes() == v3
    assert set(load_trust_store(path).command_keys) == {k.keyid for k in command}


def test_a_chain_ending_on_an_expired_root_is_refused_and_changes_nothing(
    tmp_path, root_keys, release
):
    path = chain_file(tmp_path, root_keys, release)
    before = path.read_bytes()
    v2 = document(signed_part(2, root_keys, release, expires=NOW + 300 * DAY), root_keys)
    v3 = document(signed_part(3, root_keys, release, expires=NOW - DAY), root_keys)
    with pytest.raises(RootRefused) as refused:
        apply_root_chain(path, [v2, v3], NOW)
    assert refused.value.reason is RefusalReason.EXPIRED
    assert path.read_bytes() == before


def test_an_intermediate_root_with_a_bad_signature_stops_the_walk(tmp_path, root_keys, release):
    path = chain_file(tmp_path, root_keys, release, expires=NOW + DAY)
    before = path.read_bytes()
    outsider = keys(1)
    v2 = document(signed_part(2, root_keys, release, expires=NOW - DAY), outsider)
    v3 = document(signed_part(3, root_keys, release, expires=NOW + 300 * DAY), root_keys)
    with pytest.raises(RootRefused) as refused:
        apply_root_chain(path, [v2, v3], NOW)
    assert refused.value.reason is RefusalReason.ROOT_THRESHOLD_NOT_MET
    assert path.read_bytes() == before
