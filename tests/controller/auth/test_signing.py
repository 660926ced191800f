"""The controller's command key: loaded (encrypted too), signing, and the root expiry warning."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

import pytest

from controller.auth.signing import (
    PASSPHRASE_ENV,
    CommandKeyError,
    CommandSigner,
    load_command_signer,
    log_root_expiry,
    root_expiry_warning,
)
from ota.keys import SigningKey
from ota.root import root_signed, sign_root
from ota.trust import TrustStore
from ota.trust_file import save_trust_store
from protocol.messages import Rollback


def write_root(path, days: float) -> None:
    key = SigningKey.generate()
    signed = root_signed(
        version=1,
        expires=datetime.now(timezone.utc) + timedelta(days=days),
        root_keys=[key.public_key()],
        root_threshold=1,
        release_keys=[SigningKey.generate().public_key()],
        release_threshold=1,
    )
    path.write_bytes(sign_root(signed, [key]))


def test_a_root_expiring_within_the_window_is_warned_about(tmp_path, caplog):
    path = tmp_path / "root.json"
    write_root(path, days=10)
    assert "expires in 10 days" in (root_expiry_warning(path) or "")
    assert root_expiry_warning(path, days=5) is None
    with caplog.at_level(logging.WARNING):
        log_root_expiry(path, 30)
    assert "event=root_expiring" in caplog.text


def test_an_expired_root_says_so_and_a_plain_store_gives_no_warning(tmp_path):
    path = tmp_path / "root.json"
    write_root(path, days=-2)
    assert "expired" in (root_expiry_warning(path) or "")
    plain = tmp_path / "plain.json"
    save_trust_store(TrustStore.from_keys([SigningKey.generate().public_key()]), plain)
    assert root_expiry_warning(plain) is None
    assert root_expiry_warning(tmp_path / "missing.json") is None


def test_an_encrypted_command_key_loads_with_the_passphrase_from_the_environment(
    tmp_path, monkeypatch
):
    key = SigningKey.generate()
    path = tmp_path / "command.pem"
    key.save(path, b"s3cret")
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)
    with pytest.raises(CommandKeyError, match=PASSPHRASE_ENV):
        CommandSigner.from_file(path)
    monkeypatch.setenv(PASSPHRASE_ENV, "wrong")
    with pytest.raises(CommandKeyError):
        CommandSigner.from_file(path)
    monkeypatch.setenv(PASSPHRASE_ENV, "s3cret")
    signer = CommandSigner.from_file(path, ttl_s=30)
    signed = signer.sign(Rollback(device="cam-01"))
    assert signer.keyids == (key.keyid,) and signed.sigs[0].keyid == key.keyid


def test_no_key_file_means_no_signer_but_a_broken_one_stops_the_start(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        assert load_command_signer(tmp_path / "absent.pem") is None
    assert "event=command_key_missing" in caplog.text
    broken = tmp_path / "broken.pem"
    broken.write_text("not a key")
    with pytest.raises(CommandKeyError):
        load_command_signer(broken)
