"""Signed commands: what the signature covers, and each check the device makes."""

from __future__ import annotations

import json

import pytest

from ota.commands import (
    CLOCK_SKEW_S,
    CommandRefused,
    Freshness,
    sign_command,
    signing_bytes,
    verify_command,
)
from ota.keys import SigningKey
from ota.trust import TrustStore
from protocol.codec import decode_command, encode
from protocol.events import CommandRefusal
from protocol.messages import (
    BundleOffer,
    CommandSignature,
    Deploy,
    Rollback,
    SetConfig,
    TrustUpdate,
)

NOW = 1_800_000_000.0


def store(*command: SigningKey, threshold: int = 1, revoked=()) -> TrustStore:
    return TrustStore.from_keys(
        [SigningKey.generate().public_key()],
        revoked=revoked,
        command_keys=[k.public_key() for k in command],
        command_threshold=threshold,
    )


def refusal(command, trust: TrustStore, device: str = "cam-01", now: float = NOW):
    with pytest.raises(CommandRefused) as refused:
        verify_command(command, trust, device, now)
    return refused.value.reason


def test_the_signature_covers_every_field_but_the_signatures():
    key = SigningKey.generate()
    command = sign_command(SetConfig(device="cam-01", config={"a": 1}), [key], now=NOW, ttl_s=60)
    covered = json.loads(signing_bytes(command))
    assert set(covered) == {"v", "id", "ts", "device", "exp", "type", "config"}
    assert covered["exp"] == NOW + 60 and covered["ts"] == NOW


def test_a_signed_command_survives_the_wire_and_verifies():
    key = SigningKey.generate()
    offer = BundleOffer(name="m", version=1, digest="ab" * 32, size=10, chunk_size=10, chunks=1)
    sent = sign_command(Deploy(device="cam-01", bundle=offer), [key], now=NOW, ttl_s=300)
    received = decode_command(encode(sent))
    verify_command(received, store(key), "cam-01", NOW + 10)


def test_two_of_three_command_keys_meet_a_threshold_of_two():
    keys = [SigningKey.generate() for _ in range(3)]
    trust = store(*keys, threshold=2)
    verify_command(
        sign_command(Rollback(device="cam-01"), keys[:2], now=NOW, ttl_s=60), trust, "cam-01", NOW
    )
    one = sign_command(Rollback(device="cam-01"), keys[:1], now=NOW, ttl_s=60)
    assert refusal(one, trust) is CommandRefusal.THRESHOLD_NOT_MET


def test_one_signature_repeated_does_not_count_twice():
    keys = [SigningKey.generate() for _ in range(2)]
    command = sign_command(Rollback(device="cam-01"), keys[:1], now=NOW, ttl_s=60)
    doubled = command.model_copy(update={"sigs": command.sigs * 2})
    assert refusal(doubled, store(*keys, threshold=2)) is CommandRefusal.THRESHOLD_NOT_MET


def test_a_revoked_command_key_is_unknown():
    key = SigningKey.generate()
    command = sign_command(Rollback(device="cam-01"), [key], now=NOW, ttl_s=60)
    assert refusal(command, store(key, revoked=[key.keyid])) is CommandRefusal.UNKNOWN_KEY


def test_a_changed_field_breaks_the_signature():
    key = SigningKey.generate()
    command = sign_command(SetConfig(device="cam-01", config={"a": 1}), [key], now=NOW, ttl_s=60)
    changed = command.model_copy(update={"config": {"a": 2}})
    assert refusal(changed, store(key)) is CommandRefusal.BAD_SIGNATURE


def test_a_signed_command_without_an_expiry_is_refused():
    key = SigningKey.generate()
    # signed by hand with no exp, as a broken signer would
    bare = Rollback(device="cam-01", ts=NOW)
    sig = CommandSignature(keyid=key.keyid, sig=key.sign(signing_bytes(bare)).hex())
    assert refusal(bare.model_copy(update={"sigs": (sig,)}), store(key)) is CommandRefusal.EXPIRED


def test_the_clock_skew_allowance_applies_both_ways():
    key = SigningKey.generate()
    trust = store(key)
    command = sign_command(Rollback(device="cam-01"), [key], now=NOW, ttl_s=60)
    verify_command(command, trust, "cam-01", NOW + 60 + CLOCK_SKEW_S - 1)
    verify_command(command, trust, "cam-01", NOW - CLOCK_SKEW_S + 1)
    assert refusal(command, trust, now=NOW + 60 + CLOCK_SKEW_S + 1) is CommandRefusal.EXPIRED
    assert refusal(command, trust, now=NOW - CLOCK_SKEW_S - 1) is CommandRefusal.NOT_YET_VALID


def test_a_tighter_window_refuses_a_long_life():
    key = SigningKey.generate()
    command = sign_command(Rollback(device="cam-01"), [key], now=NOW, ttl_s=600)
    with pytest.raises(CommandRefused) as refused:
        verify_command(command, store(key), "cam-01", NOW, Freshness(window_s=300))
    assert refused.value.reason is CommandRefusal.EXPIRED


def test_a_store_without_command_keys_accepts_only_trust_updates_unsigned():
    legacy = TrustStore.from_keys([SigningKey.generate().public_key()])
    verify_command(TrustUpdate(device="cam-01", roots=("{}",)), legacy, "cam-01", NOW)
    assert refusal(Rollback(device="cam-01"), legacy) is CommandRefusal.NO_COMMAND_KEYS


def test_a_sign_with_no_life_is_an_error():
    with pytest.raises(ValueError, match="ttl"):
        sign_command(Rollback(device="cam-01"), [SigningKey.generate()], now=NOW, ttl_s=0)
