"""Attacks on the command channel: a real agent on a real mosquitto, commands forged as an
attacker with broker access would; each refused with its reason and nothing changed on disk."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.commands import CommandGuard, CommandHandler, SeenCommands
from agent.config_overlay import OVERLAY_FILE
from ota.commands import REPLAY_WINDOW_S, sign_command, signing_bytes
from ota.keys import SigningKey
from ota.trust import TrustStore
from ota.trust_file import load_trust_store, save_trust_store
from protocol.codec import encode
from protocol.events import CommandRefusal, InstallReason
from protocol.messages import (
    CommandSignature,
    RestartPipeline,
    Rollback,
    SetConfig,
)
from tests.security.command_harness import DEVICE, LiveDevice, live_device

pytestmark = pytest.mark.e2e

RAISE_BATCH = {"det_batch_max": 7}


@pytest.fixture(scope="module")
def device(tmp_path_factory, blazeface_model: Path) -> Iterator[LiveDevice]:
    yield from live_device(tmp_path_factory.mktemp("live"), blazeface_model)


def refused(device: LiveDevice, command, reason) -> None:
    """Send `command`; its ack must be a refusal for `reason` and the disk must not change."""
    before = device.disk()
    ack = device.send(command)
    assert (ack.ok, ack.result) == (False, reason.value), ack
    assert device.disk() == before
    assert not (device.data_dir / OVERLAY_FILE).exists()


def test_unsigned_set_config_is_refused(device):
    """An anonymous broker client orders a settings change."""
    refused(device, SetConfig(device=DEVICE, config=RAISE_BATCH), CommandRefusal.UNSIGNED)


def test_command_signed_by_a_stranger_is_refused(device):
    """An attacker signs with a key of their own."""
    forged = device.signed(SetConfig(device=DEVICE, config=RAISE_BATCH), SigningKey.generate())
    refused(device, forged, CommandRefusal.UNKNOWN_KEY)


def test_command_signed_by_a_release_key_is_refused(device):
    """A stolen release key (bundle role) is used to sign commands."""
    forged = device.signed(SetConfig(device=DEVICE, config=RAISE_BATCH), device.release_key)
    refused(device, forged, CommandRefusal.UNKNOWN_KEY)


def test_changed_field_after_signing_is_refused(device):
    """A man in the middle rewrites the config of a genuinely signed command."""
    genuine = device.signed(SetConfig(device=DEVICE, config={"det_batch_max": 50}))
    tampered = genuine.model_copy(update={"config": RAISE_BATCH})
    refused(device, tampered, CommandRefusal.BAD_SIGNATURE)


def test_signature_moved_to_another_command_is_refused(device):
    """The signature of one command is stapled onto a different one."""
    genuine = device.signed(RestartPipeline(device=DEVICE))
    other = Rollback(device=DEVICE, id=genuine.id, ts=genuine.ts, exp=genuine.exp)
    refused(device, other.model_copy(update={"sigs": genuine.sigs}), CommandRefusal.BAD_SIGNATURE)


def test_expired_command_is_refused(device):
    """A command captured an hour ago is sent again after it expired."""
    old = device.signed(Rollback(device=DEVICE), at=time.time() - 3600)
    refused(device, old, CommandRefusal.EXPIRED)


def test_command_from_the_future_is_refused(device):
    """A command stamped ahead to outlive its window."""
    ahead = device.signed(Rollback(device=DEVICE), at=time.time() + 3600)
    refused(device, ahead, CommandRefusal.NOT_YET_VALID)


def test_command_with_a_life_longer_than_the_replay_window_is_refused(device):
    """A signer coaxed into a long-lived command that would outlast the seen-id memory."""
    long = device.signed(Rollback(device=DEVICE), ttl=REPLAY_WINDOW_S * 4)
    refused(device, long, CommandRefusal.EXPIRED)


def test_replayed_command_is_refused(device):
    """A genuine command captured on the broker is published again."""
    genuine = device.signed(RestartPipeline(device=DEVICE))
    assert device.send(genuine).ok
    refused(device, genuine, CommandRefusal.REPLAYED)


def test_replay_after_an_agent_restart_is_refused(device):
    """A captured command is replayed after the agent restarted and lost its memory."""
    genuine = device.signed(RestartPipeline(device=DEVICE))
    assert device.send(genuine).ok
    device.stop()
    device.start()
    refused(device, genuine, CommandRefusal.REPLAYED)


def test_command_for_another_device_is_refused(device):
    """A command signed for device B is delivered to device A (a bridged or misrouted topic)."""
    other = device.signed(SetConfig(device="cam-other", config=RAISE_BATCH))
    before = device.disk()
    # handed to the agent's handler as its session would, past the topic check
    device.agent.commands.handle(other)
    ack = device.operator.ack_for(other.id)
    assert (ack.ok, ack.result) == (False, CommandRefusal.MISADDRESSED.value)
    assert device.disk() == before


def test_device_id_rewritten_after_signing_is_refused(device):
    """A command signed for another device is readdressed to this one."""
    other = device.signed(SetConfig(device="cam-other", config=RAISE_BATCH))
    readdressed = other.model_copy(update={"device": DEVICE})
    refused(device, readdressed, CommandRefusal.BAD_SIGNATURE)


def test_rollback_below_the_release_floor_is_refused(device):
    """A genuine rollback would bring back a bundle of an older, vulnerable release."""
    refused(device, device.signed(Rollback(device=DEVICE)), InstallReason.BELOW_RELEASE_FLOOR)
    assert device.agent.store.current().manifest.release == 2


def test_signature_with_a_forged_expiry_is_refused(device):
    """The expiry of a genuine command is pushed out to keep it valid for longer."""
    genuine = device.signed(Rollback(device=DEVICE))
    stretched = genuine.model_copy(update={"exp": genuine.exp + 240})
    refused(device, stretched, CommandRefusal.BAD_SIGNATURE)


def test_garbage_signature_is_dropped_before_any_work(device):
    """A signature field that is not even hex never reaches the handler."""
    genuine = device.signed(Rollback(device=DEVICE))
    raw = json.loads(encode(genuine))
    raw["sigs"][0]["sig"] = "zz" * 64
    before = device.disk()
    device.operator.publish(json.dumps(raw).encode())
    probe = device.signed(RestartPipeline(device=DEVICE))
    # the next genuine command is answered first: the forged one got no ack and did nothing
    assert device.send(probe).ok
    assert device.operator.acks.empty()
    assert device.disk() == before


# ---- against the handler and its guard alone: trust stores the live device does not have ----


class Untouchable:
    """A command target that fails the test if any command reaches it."""

    def __getattr__(self, name: str):
        raise AssertionError(f"{name} reached the target")


@pytest.fixture
def guarded(tmp_path):
    """A guarded handler on `cam-sec` over a trust file the test writes; acks collected."""
    trust_file = tmp_path / "trust.json"
    seen = SeenCommands(tmp_path / "seen.sqlite")
    acks: list[tuple] = []
    guard = CommandGuard(DEVICE, lambda: load_trust_store(trust_file), seen)
    handler = CommandHandler(Untouchable(), lambda *a: acks.append(a), guard=guard)
    yield trust_file, handler, acks
    seen.close()


def refused_by(guarded, store: TrustStore, command, reason) -> None:
    trust_file, handler, acks = guarded
    save_trust_store(store, trust_file)
    before = trust_file.read_bytes()
    handler.handle(command)
    assert acks[-1][:3] == (command.id, False, reason)
    assert trust_file.read_bytes() == before


def test_one_signature_repeated_does_not_meet_a_threshold_of_two(guarded):
    """An attacker holding one of two required command keys repeats its signature."""
    keys = [SigningKey.generate() for _ in range(2)]
    store = TrustStore.from_keys(
        [SigningKey.generate().public_key()],
        command_keys=[k.public_key() for k in keys],
        command_threshold=2,
    )
    one = sign_command(Rollback(device=DEVICE), keys[:1], now=time.time(), ttl_s=60)
    doubled = one.model_copy(update={"sigs": one.sigs * 2})
    refused_by(guarded, store, doubled, CommandRefusal.THRESHOLD_NOT_MET)


def test_revoked_command_key_is_refused(guarded):
    """A leaked command key keeps signing after the root revoked it."""
    key = SigningKey.generate()
    store = TrustStore.from_keys(
        [SigningKey.generate().public_key()],
        revoked=[key.keyid],
        command_keys=[key.public_key()],
    )
    bare = Rollback(device=DEVICE, ts=time.time(), exp=time.time() + 60)
    sig = CommandSignature(keyid=key.keyid, sig=key.sign(signing_bytes(bare)).hex())
    refused_by(guarded, store, bare.model_copy(update={"sigs": (sig,)}), CommandRefusal.UNKNOWN_KEY)


def test_device_without_command_keys_obeys_no_ordinary_command(guarded):
    """A device whose trust predates signed commands is sent an unsigned order."""
    legacy = TrustStore.from_keys([SigningKey.generate().public_key()])
    refused_by(
        guarded,
        legacy,
        SetConfig(device=DEVICE, config=RAISE_BATCH),
        CommandRefusal.NO_COMMAND_KEYS,
    )
