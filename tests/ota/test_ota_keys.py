from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest

from ota.keys import PublicKey, SigningKey


def test_signature_verifies_only_for_the_signed_data_and_key(key: SigningKey) -> None:
    sig = key.sign(b"manifest bytes")

    assert len(sig) == 64
    assert key.public_key().verify(sig, b"manifest bytes")
    assert not key.public_key().verify(sig, b"manifest bytez")
    assert not SigningKey.generate().public_key().verify(sig, b"manifest bytes")
    assert not key.public_key().verify(sig[:-1], b"manifest bytes")


def test_keyid_is_sha256_of_the_raw_public_key(key: SigningKey) -> None:
    public = key.public_key()

    assert public.keyid == hashlib.sha256(bytes.fromhex(public.to_hex())).hexdigest()
    assert key.keyid == public.keyid
    assert SigningKey.generate().keyid != key.keyid


def test_public_key_hex_round_trip(key: SigningKey) -> None:
    text = key.public_key().to_hex()

    again = PublicKey.from_hex(text)

    assert len(text) == 64
    assert again == key.public_key()
    assert again.keyid == key.keyid


@pytest.mark.parametrize("text", ["", "zz" * 32, "ab" * 31, "ab" * 33])
def test_public_key_from_bad_hex_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        PublicKey.from_hex(text)


def test_saved_key_is_owner_only_and_loads_back(key: SigningKey, tmp_path: Path) -> None:
    path = tmp_path / "release.pem"

    key.save(path)
    loaded = SigningKey.load(path)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert loaded.keyid == key.keyid
    assert key.public_key().verify(loaded.sign(b"x"), b"x")
    assert [p.name for p in tmp_path.iterdir()] == ["release.pem"]


def test_save_replaces_an_existing_key_file(key: SigningKey, tmp_path: Path) -> None:
    path = tmp_path / "release.pem"
    path.write_text("old")
    path.chmod(0o644)

    key.save(path)

    assert SigningKey.load(path).keyid == key.keyid
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_loading_a_non_ed25519_key_is_refused(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path = tmp_path / "ec.pem"
    path.write_bytes(pem)

    with pytest.raises(ValueError, match="Ed25519"):
        SigningKey.load(path)
