"""Attacks on the root document, each refused with its exact reason.

Documents are signed here by hand over canonical JSON, not with ota.root.sign_root, so a
passing test checks the format the device reads, not only that signer and checker agree.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import pytest

from ota.errors import RootRefused
from ota.keys import SigningKey
from ota.root import load_root, parse_root, update_root
from protocol.events import RefusalReason
from tests.ota.ota_forge import NOW

DAY = timedelta(days=1)


def signed_part(
    version: int,
    root: Sequence[SigningKey],
    release: Sequence[SigningKey],
    *,
    root_threshold: int = 1,
    release_threshold: int = 1,
    expires: Any = NOW + 365 * DAY,
    revoked: Sequence[str] = (),
) -> dict[str, Any]:
    keys = {k.keyid: k.public_key().to_hex() for k in [*root, *release]}
    return {
        "type": "root",
        "version": version,
        "expires": expires.isoformat().replace("+00:00", "Z"),
        "keys": keys,
        "roles": {
            "root": {"keyids": [k.keyid for k in root], "threshold": root_threshold},
            "release": {"keyids": [k.keyid for k in release], "threshold": release_threshold},
        },
        "revoked": list(revoked),
    }


def document(signed: dict[str, Any], signers: Sequence[SigningKey]) -> bytes:
    """`signed` with one signature per signer, repeats kept, over the canonical bytes."""
    message = json.dumps(signed, sort_keys=True, separators=(",", ":")).encode()
    sigs = [{"keyid": k.keyid, "sig": k.sign(message).hex()} for k in signers]
    return json.dumps({"signed": signed, "signatures": sigs}, indent=1).encode()


def keys(n: int) -> list[SigningKey]:
    return [SigningKey.generate() for _ in range(n)]


@pytest.fixture
def fleet() -> dict[str, list[SigningKey]]:
    return {"root": keys(3), "release": keys(2)}


@pytest.fixture
def v1(fleet: dict[str, list[SigningKey]]) -> Any:
    signed = signed_part(1, fleet["root"], fleet["release"], root_threshold=2)
    return load_root(document(signed, fleet["root"][:2]), NOW)


def refusal(call: Any, *args: Any) -> RootRefused:
    with pytest.raises(RootRefused) as refused:
        call(*args)
    return refused.value


def test_a_self_signed_root_gives_the_release_role_as_trust_store(fleet, v1) -> None:
    store = v1.trust_store()

    assert v1.version == 1
    assert set(store.release_keys) == {k.keyid for k in fleet["release"]}
    assert store.threshold == 1
    assert store.root_version == 1 and store.expires == NOW + 365 * DAY


def test_root_signed_by_a_key_outside_the_root_role_is_refused(fleet) -> None:
    signed = signed_part(1, fleet["root"], fleet["release"])
    # a release key is in `keys` but not in the root role
    refused = refusal(load_root, document(signed, fleet["release"]), NOW)

    assert refused.reason is RefusalReason.ROOT_THRESHOLD_NOT_MET


def test_repeating_one_signature_does_not_reach_the_threshold(fleet) -> None:
    signed = signed_part(1, fleet["root"], fleet["release"], root_threshold=2)
    one = fleet["root"][0]

    refused = refusal(load_root, document(signed, [one, one, one]), NOW)

    assert refused.reason is RefusalReason.ROOT_THRESHOLD_NOT_MET
    assert "1 of 2" in refused.detail


def test_a_changed_root_after_signing_is_refused(fleet) -> None:
    signed = signed_part(1, fleet["root"], fleet["release"])
    data = json.loads(document(signed, fleet["root"][:1]))
    data["signed"]["roles"]["release"]["keyids"] = [fleet["root"][2].keyid]

    refused = refusal(parse_root, json.dumps(data).encode())

    assert refused.reason is RefusalReason.ROOT_THRESHOLD_NOT_MET


def test_expired_root_is_refused_beyond_the_clock_skew(fleet) -> None:
    signed = signed_part(1, fleet["root"], fleet["release"], expires=NOW - DAY)
    data = document(signed, fleet["root"][:1])

    assert refusal(load_root, data, NOW).reason is RefusalReason.EXPIRED
    assert load_root(data, NOW - DAY + timedelta(minutes=4)).version == 1


def test_rotation_chain_v1_v2_v3_is_accepted(fleet, v1) -> None:
    old, mid, new = fleet["root"], keys(2), keys(2)
    v2_signed = signed_part(2, mid, fleet["release"], root_threshold=2)
    v2 = update_root(v1, document(v2_signed, [*old[:2], *mid]), NOW)
    v3_signed = signed_part(3, new, fleet["release"], root_threshold=1)
    v3 = update_root(v2, document(v3_signed, [mid[0], mid[1], new[0]]), NOW)

    assert (v2.version, v3.version) == (2, 3)
    assert v3.signed.roles.root.keyids == tuple(k.keyid for k in new)
    # v1's keys no longer vouch for anything once v2 replaced them
    v4_signed = signed_part(4, new, fleet["release"])
    refused = refusal(update_root, v3, document(v4_signed, old), NOW)
    assert refused.reason is RefusalReason.ROOT_THRESHOLD_NOT_MET


def test_root_version_skip_is_refused(fleet, v1) -> None:
    signed = signed_part(3, fleet["root"], fleet["release"], root_threshold=2)

    refused = refusal(update_root, v1, document(signed, fleet["root"]), NOW)

    assert refused.reason is RefusalReason.ROOT_VERSION
    assert "3 does not follow 1" in refused.detail


def test_replaying_the_current_root_version_is_refused(fleet, v1) -> None:
    signed = signed_part(1, fleet["root"], fleet["release"], root_threshold=2)

    refused = refusal(update_root, v1, document(signed, fleet["root"]), NOW)

    assert refused.reason is RefusalReason.ROOT_VERSION


def test_new_root_not_signed_by_the_old_threshold_is_refused(fleet, v1) -> None:
    new = keys(2)
    signed = signed_part(2, new, fleet["release"], root_threshold=2)
    # one old key of the two the old threshold needs
    refused = refusal(update_root, v1, document(signed, [fleet["root"][0], *new]), NOW)

    assert refused.reason is RefusalReason.ROOT_THRESHOLD_NOT_MET
    assert "old root keys" in refused.detail


def test_new_root_not_signed_by_the_new_threshold_is_refused(fleet, v1) -> None:
    new = keys(2)
    signed = signed_part(2, new, fleet["release"], root_threshold=2)

    refused = refusal(update_root, v1, document(signed, [*fleet["root"], new[0]]), NOW)

    assert refused.reason is RefusalReason.ROOT_THRESHOLD_NOT_MET
    assert "new root keys" in refused.detail


def test_a_revoked_root_key_no_longer_counts_for_the_next_root(fleet) -> None:
    root, release = fleet["root"], fleet["release"]
    v1_signed = signed_part(1, root, release, root_threshold=2, revoked=[root[2].keyid])
    v1 = parse_root(document(v1_signed, root[:2]))
    v2_signed = signed_part(2, root, release, root_threshold=2)

    refused = refusal(update_root, v1, document(v2_signed, [root[0], root[2]]), NOW)

    assert refused.reason is RefusalReason.ROOT_THRESHOLD_NOT_MET


def test_expired_new_root_is_refused(fleet, v1) -> None:
    signed = signed_part(2, fleet["root"], fleet["release"], root_threshold=2, expires=NOW - DAY)

    refused = refusal(update_root, v1, document(signed, fleet["root"]), NOW)

    assert refused.reason is RefusalReason.EXPIRED


def _bad_documents(fleet: dict[str, list[SigningKey]]) -> list[bytes]:
    root, release = fleet["root"], fleet["release"]
    good = signed_part(1, root, release)
    swapped = dict(good, keys={root[0].keyid: release[0].public_key().to_hex()})
    too_high = signed_part(1, root, release, root_threshold=4)
    naive = dict(good, expires="2030-01-01T00:00:00")
    extra = dict(good, delegations={})
    return [
        b"not json",
        b'{"signed": {}, "signed": {}, "signatures": []}',
        document(dict(good, version=float("nan")), root),
        document(dict(good, type="targets"), root),
        document(swapped, root),
        document(too_high, root),
        document(naive, root),
        document(extra, root),
        b"{" + b" " * (70 << 10) + b"}",
    ]


def test_malformed_root_documents_are_refused(fleet) -> None:
    for data in _bad_documents(fleet):
        refused = refusal(parse_root, data)
        assert refused.reason is RefusalReason.MALFORMED_ROOT, (data[:60], refused)
