"""The first admin when nobody can log in yet: a one-time secret made at start while no user
exists (printed once in the controller's log), exchanged once for the first admin account."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from controller.auth.models import AuthSecret, User
from controller.auth.users import Role, UserError, create_user, user_count

_NAME = "bootstrap"
BOOTSTRAP_TTL_S = 24 * 3600.0
# a secret typed after `--secret` must not start with "-", or the command line reads it as an option
BOOTSTRAP_PREFIX = "efb_"


def _sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def make_bootstrap_secret(sessions: sessionmaker[Session]) -> str | None:
    """A new one-time secret when no user exists (replacing an older one), else None (also
    when another replica made one at the same moment: that replica's log shows it)."""
    with sessions() as db:
        if user_count(db) > 0:
            db.execute(delete(AuthSecret).where(AuthSecret.name == _NAME))
            db.commit()
            return None
        secret = BOOTSTRAP_PREFIX + secrets.token_urlsafe(24)
        db.execute(delete(AuthSecret).where(AuthSecret.name == _NAME))
        db.add(AuthSecret(name=_NAME, value=_sha256(secret), created=time.time()))
        try:
            db.commit()
        except IntegrityError:
            # another replica starting at the same moment made one: its log holds it
            db.rollback()
            return None
        return secret


def redeem_bootstrap_secret(db: Session, secret: str, name: str, password: str) -> User:
    """Create the first admin with `secret` (not committed); the secret is used up.

    Raises UserError(bootstrap_refused, bad_name, bad_password).
    """
    row = db.get(AuthSecret, _NAME)
    fresh = row is not None and time.time() - row.created < BOOTSTRAP_TTL_S
    given = _sha256(secret[:256])
    if row is None or not fresh or not hmac.compare_digest(row.value, given):
        raise UserError("bootstrap_refused", "no such one-time secret, or it was used")
    if user_count(db) > 0:
        raise UserError("bootstrap_refused", "a user exists: log in instead")
    user = create_user(db, name, password, Role.ADMIN)
    # deleting by value: of two concurrent redemptions only one removes the row
    gone = db.execute(delete(AuthSecret).where(AuthSecret.name == _NAME, AuthSecret.value == given))
    if getattr(gone, "rowcount", 0) != 1:
        raise UserError("bootstrap_refused", "no such one-time secret, or it was used")
    return user
