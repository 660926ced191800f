"""Per-request tokens for device-facing HTTP endpoints (bundle download, snapshot upload).

The controller puts a token into the command it sends (a deploy offer, a snapshot request);
the agent sends it back in a header. A token is an HMAC over what it allows (purpose, object,
device, expiry) with a key kept in the database, so every replica checks it without state and
it cannot be bent to another bundle, snapshot or device.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from controller.auth.models import AuthSecret

_KEY_NAME = "transfer-hmac"
_TOKEN = re.compile(r"^t1\.([a-z0-9-]{3,64})\.([0-9]{1,12})\.([0-9a-f]{64})$")


class TransferPurpose:
    BUNDLE_FILE = "bundle-file"
    SNAPSHOT_UPLOAD = "snapshot-upload"


@dataclass(frozen=True)
class TransferGrant:
    """What a valid token allows."""

    device: str
    expires: int


def load_or_create_key(sessions: sessionmaker[Session], name: str = _KEY_NAME) -> bytes:
    """The named secret from the database, made on first use (one value for every replica)."""
    with sessions() as db:
        row = db.get(AuthSecret, name)
        if row is not None:
            return bytes.fromhex(row.value)
        value = secrets.token_hex(32)
        db.add(AuthSecret(name=name, value=value, created=time.time()))
        try:
            db.commit()
        except IntegrityError:  # another replica made it first: use theirs
            db.rollback()
            row = db.get(AuthSecret, name)
            if row is None:
                raise
            return bytes.fromhex(row.value)
        return bytes.fromhex(value)


class TransferTokens:
    """Makes and checks transfer tokens with one key."""

    def __init__(self, key: bytes, ttl_s: float = 24 * 3600.0) -> None:
        if len(key) < 16:
            raise ValueError("a transfer key has at least 16 bytes")
        self._key = key
        self.ttl_s = ttl_s

    def _mac(self, purpose: str, obj: str, device: str, expires: int) -> str:
        message = f"{purpose}|{obj}|{device}|{expires}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def issue(self, purpose: str, obj: str, device: str, *, now: float | None = None) -> str:
        """A token letting `device` do `purpose` on `obj` until the TTL ends."""
        expires = int((time.time() if now is None else now) + self.ttl_s)
        return f"t1.{device}.{expires}.{self._mac(purpose, obj, device, expires)}"

    def check(
        self, token: str | None, purpose: str, obj: str, *, now: float | None = None
    ) -> TransferGrant | None:
        """The grant of `token` for `purpose` on `obj`, or None (malformed, forged, expired)."""
        match = _TOKEN.fullmatch(token or "")
        if match is None:
            return None
        device, expires = match[1], int(match[2])
        if expires <= (time.time() if now is None else now):
            return None
        if not hmac.compare_digest(match[3], self._mac(purpose, obj, device, expires)):
            return None
        return TransferGrant(device=device, expires=expires)
