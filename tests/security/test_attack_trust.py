"""Attacks on the device's trust: forged roots pushed with genuinely signed trust-update
commands to a real agent, and bundles that would step below the anti-rollback floor; each
refused with its reason and nothing changed on disk."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ota.errors import BundleRefused
from ota.install import SlotStore
from ota.keys import SigningKey
from ota.trust import TrustStore
from protocol.events import CommandRefusal, RefusalReason
from protocol.messages import Rollback, TrustUpdate
from tests.ota.ota_forge import NOW, forge, manifest_for
from tests.security.command_harness import DEVICE, LiveDevice, live_device

pytestmark = pytest.mark.e2e

FILES = {"litert-fp32/model.tflite": os.urandom(3000), "shared/labels.txt": b"face\n"}


@pytest.fixture(scope="module")
def device(tmp_path_factory, blazeface_model: Path) -> Iterator[LiveDevice]:
    yield from live_device(tmp_path_factory.mktemp("live-root"), blazeface_model, root=True)


def pushed_and_refused(device: LiveDevice, documents: list[bytes], reason) -> None:
    """Push `documents` in a genuinely signed trust-update; refused for `reason`, disk unchanged."""
    before = device.disk()
    command = device.signed(TrustUpdate(device=DEVICE, roots=tuple(d.decode() for d in documents)))
    ack = device.send(command)
    assert (ack.ok, ack.result) == (False, reason.value), ack
    assert device.disk() == before


def test_root_signed_only_by_an_attacker_is_refused(device):
    """An attacker who controls the command channel pushes a root of their own keys."""
    attacker = [SigningKey.generate()]
    forged = device.root_document(2, root_keys=attacker, command_keys=attacker)
    pushed_and_refused(device, [forged], RefusalReason.ROOT_THRESHOLD_NOT_MET)


def test_stolen_old_root_key_alone_cannot_install_new_root_keys(device):
    """A leaked current root key signs a root handing the root role to the attacker."""
    attacker = [SigningKey.generate()]
    forged = device.root_document(2, root_keys=attacker, signers=device.root_keys)
    pushed_and_refused(device, [forged], RefusalReason.ROOT_THRESHOLD_NOT_MET)


def test_root_that_skips_a_version_is_refused(device):
    """A root pushed out of order to skip the revocations of the version in between."""
    pushed_and_refused(device, [device.root_document(3)], RefusalReason.ROOT_VERSION)


def test_chain_ending_on_an_expired_root_is_refused(device):
    """A chain of genuine but stale roots, the newest of them expired."""
    chain = [device.root_document(2), device.root_document(3, expires_days=-1)]
    pushed_and_refused(device, chain, RefusalReason.EXPIRED)


def test_chain_with_a_forged_intermediate_root_is_refused(device):
    """A forged intermediate root slipped between genuine ones."""
    chain = [
        device.root_document(2, signers=[SigningKey.generate()]),
        device.root_document(3),
    ]
    pushed_and_refused(device, chain, RefusalReason.ROOT_THRESHOLD_NOT_MET)


def test_root_with_a_repeated_key_in_json_is_malformed(device):
    """A root whose JSON repeats a field, so two parsers could read different keys."""
    genuine = device.root_document(2).decode()
    doubled = genuine.replace('"version": 2', '"version": 2, "version": 2', 1)
    pushed_and_refused(device, [doubled.encode()], RefusalReason.MALFORMED_ROOT)


def test_root_with_a_command_threshold_above_its_keys_is_malformed(device):
    """A root that sets an impossible command threshold to lock devices out of commands."""
    doc = json.loads(device.root_document(2))
    doc["signed"]["roles"]["command"]["threshold"] = 5
    pushed_and_refused(device, [json.dumps(doc).encode()], RefusalReason.MALFORMED_ROOT)


def test_unsigned_trust_update_is_refused(device):
    """A genuine root chain pushed unsigned by a broker client to force an early rotation."""
    before = device.disk()
    command = TrustUpdate(device=DEVICE, roots=(device.root_document(2).decode(),))
    ack = device.send(command)
    assert (ack.ok, ack.result) == (False, CommandRefusal.UNSIGNED.value)
    assert device.disk() == before


def test_command_key_rotated_out_no_longer_commands(device):
    """A command key removed from the root keeps signing after the device took the new root."""
    new_key = SigningKey.generate()
    rotated = device.root_document(2, command_keys=[new_key])
    ack = device.send(device.signed(TrustUpdate(device=DEVICE, roots=(rotated.decode(),))))
    assert ack.ok, ack
    before = device.disk()
    old = device.send(device.signed(Rollback(device=DEVICE)))
    assert (old.ok, old.result) == (False, CommandRefusal.UNKNOWN_KEY.value)
    assert device.disk() == before
    device.command_key = new_key  # the signer the later cases use


# ---- anti-rollback across bundle names: a slot store of its own -------------------------


@pytest.fixture
def floor_store(tmp_path) -> tuple[SlotStore, SigningKey, TrustStore]:
    """A store that committed `face` with release 5: its floor is 5."""
    key = SigningKey.generate()
    trust = TrustStore.from_keys([key.public_key()])
    store = SlotStore(tmp_path / "store")
    manifest = manifest_for(FILES, name="face", version=1).model_copy(update={"release": 5})
    bundle = forge(tmp_path / "face.tar", FILES, [key], manifest=manifest)
    store.commit(store.install(bundle, trust, NOW).digest)
    return store, key, trust


def snapshot(store: SlotStore) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(store.root.rglob("*")) if p.is_file()}


def test_older_release_under_another_name_is_refused(floor_store, tmp_path):
    """An old, vulnerable bundle renamed to dodge the per-name version floor."""
    store, key, trust = floor_store
    renamed = manifest_for(FILES, name="face-legacy", version=99).model_copy(update={"release": 4})
    path = forge(tmp_path / "renamed.tar", FILES, [key], manifest=renamed)
    before = snapshot(store)
    with pytest.raises(BundleRefused) as refused:
        store.install(path, trust, NOW)
    assert refused.value.reason is RefusalReason.ROLLBACK
    assert snapshot(store) == before


def test_bundle_from_before_the_release_counter_is_refused_above_the_floor(floor_store, tmp_path):
    """A validly signed bundle made before release counters existed is replayed."""
    store, key, trust = floor_store
    path = forge(tmp_path / "old.tar", FILES, [key], manifest=manifest_for(FILES, name="person"))
    before = snapshot(store)
    with pytest.raises(BundleRefused) as refused:
        store.install(path, trust, NOW)
    assert refused.value.reason is RefusalReason.ROLLBACK
    assert snapshot(store) == before
