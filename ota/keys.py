"""Ed25519 keys: release keys sign manifests, root keys sign roots, command keys sign commands;
devices verify them.

cryptography loads with the first key made or used, not with this module: a device agent
imports the trust store's types at start but verifies nothing until a bundle or command comes."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from ota.atomic import write_atomic

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )


def is_encrypted_pem(path: Path) -> bool:
    """True when the PEM file at `path` holds an encrypted private key. Raises OSError."""
    return b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in Path(path).read_bytes()


class PublicKey:
    """A release public key, named by the hex sha256 of its raw 32 bytes."""

    def __init__(self, key: Ed25519PublicKey) -> None:
        from cryptography.hazmat.primitives import serialization

        self._key = key
        self.raw: bytes = key.public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.keyid: str = hashlib.sha256(self.raw).hexdigest()

    @classmethod
    def from_hex(cls, text: str) -> PublicKey:
        """Parse 64 hex characters of raw key. Raises ValueError."""
        try:
            raw = bytes.fromhex(text)
        except ValueError as exc:
            raise ValueError("public key is not hex") from exc
        if len(raw) != 32:
            raise ValueError(f"public key must be 32 bytes, got {len(raw)}")
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        return cls(Ed25519PublicKey.from_public_bytes(raw))

    def to_hex(self) -> str:
        return self.raw.hex()

    def verify(self, sig: bytes, data: bytes) -> bool:
        """True when `sig` is this key's signature over `data`; never raises for bad input."""
        from cryptography.exceptions import InvalidSignature

        try:
            self._key.verify(sig, data)
        except InvalidSignature:
            return False
        return True

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicKey) and other.raw == self.raw

    def __hash__(self) -> int:
        return hash(self.raw)

    def __repr__(self) -> str:
        return f"PublicKey(keyid={self.keyid[:16]}...)"


class SigningKey:
    """A release private key; kept on the controller, never on devices."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self._public = PublicKey(key.public_key())

    @classmethod
    def generate(cls) -> SigningKey:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: Path, passphrase: bytes | None = None) -> SigningKey:
        """Read a PKCS#8 PEM file, encrypted when `passphrase` is given.

        Raises OSError; ValueError (not Ed25519, a wrong or missing passphrase); TypeError
        (a passphrase for an unencrypted file)."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=passphrase)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path} does not hold an Ed25519 private key")
        return cls(key)

    def save(self, path: Path, passphrase: bytes | None = None) -> None:
        """Write the key as PEM, encrypted when `passphrase` is given, readable by the owner
        only, atomically. Raises OSError."""
        from cryptography.hazmat.primitives import serialization

        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(passphrase)
            if passphrase
            else serialization.NoEncryption()
        )
        pem = self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )
        # the temp file is created 0600 too, so the key is never briefly world-readable
        write_atomic(Path(path), pem, mode=0o600)

    def public_key(self) -> PublicKey:
        return self._public

    @property
    def keyid(self) -> str:
        return self._public.keyid

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)

    def __repr__(self) -> str:
        return f"SigningKey(keyid={self.keyid[:16]}...)"
