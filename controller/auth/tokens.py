"""Credentials an operator presents: API tokens (`ef_<id>_<secret>`, shown once, stored as a
sha256, scoped to a role, expiring, revocable) and browser sessions (a random cookie value,
stored as a sha256, with the CSRF token bound to it)."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from controller.auth.models import ApiToken, LoginSession, User
from controller.auth.users import Role, UserError

TOKEN_PREFIX = "ef_"  # noqa: S105 - a prefix, not a secret
_TOKEN = re.compile(r"^ef_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
_SESSION = re.compile(r"^[A-Za-z0-9_-]{43}$")
MAX_TOKEN_TTL_S = 366 * 86400
# a one-time login link is a short-lived token of this name, spent by its first use
LOGIN_LINK_NAME = "login-link"
LOGIN_LINK_TTL_S = 900.0
# last_used is written at most this often per token, not on every request
_LAST_USED_STEP_S = 60.0


@dataclass(frozen=True)
class Principal:
    """Who a request acts as, and how it proved it."""

    user_id: int
    name: str
    role: Role
    # "token:<id>", "session" or "bootstrap"
    via: str
    csrf: str | None = None

    @property
    def by_cookie(self) -> bool:
        return self.via == "session"


def _sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def issue_token(
    db: Session, user: User, name: str, role: Role, ttl_s: float, *, now: float | None = None
) -> tuple[ApiToken, str]:
    """A new token for `user` (not committed) and its secret, which is shown only now.

    Raises UserError(scope_too_wide, bad_ttl, bad_name).
    """
    role = Role(role)
    if not Role(user.role).allows(role):
        raise UserError("scope_too_wide", f"a {user.role} cannot make a {role} token")
    if not 0 < ttl_s <= MAX_TOKEN_TTL_S:
        raise UserError("bad_ttl", f"a token lives between 1 s and {MAX_TOKEN_TTL_S} s")
    if not 1 <= len(name) <= 64 or not name.isprintable():
        raise UserError("bad_name", "a token name has 1-64 printable characters")
    now = time.time() if now is None else now
    token_id = secrets.token_hex(6)
    secret = f"{TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
    row = ApiToken(
        id=token_id,
        user_id=user.id,
        name=name,
        role=role.value,
        secret_hash=_sha256(secret),
        created=now,
        expires=now + ttl_s,
        revoked=None,
        last_used=None,
    )
    db.add(row)
    db.flush()
    return row, secret


def token_principal(db: Session, secret: str, *, now: float | None = None) -> Principal | None:
    """Who `secret` (an API token) is, or None: unknown, expired, revoked or its user disabled.

    Records the time of use (committed by the caller).
    """
    if _TOKEN.fullmatch(secret) is None:
        return None
    now = time.time() if now is None else now
    row = db.scalar(select(ApiToken).where(ApiToken.secret_hash == _sha256(secret)))
    if row is None or row.revoked is not None or row.expires <= now:
        return None
    user = db.get(User, row.user_id)
    if user is None or user.disabled:
        return None
    if row.last_used is None or now - row.last_used >= _LAST_USED_STEP_S:
        row.last_used = now
    # a token never acts above its user's present role
    role = min(Role(row.role), Role(user.role), key=lambda r: r.rank)
    return Principal(user_id=user.id, name=user.name, role=role, via=f"token:{row.id}")


def list_tokens(db: Session, user: User | None = None) -> list[ApiToken]:
    """Every token, or `user`'s, newest first."""
    query = select(ApiToken).order_by(ApiToken.created.desc())
    if user is not None:
        query = query.where(ApiToken.user_id == user.id)
    return list(db.scalars(query))


def revoke_token(db: Session, token_id: str, *, owner: User | None = None) -> ApiToken:
    """Revoke a token (of `owner` when given). Raises UserError(no_token)."""
    row = db.get(ApiToken, token_id) if re.fullmatch(r"[0-9a-f]{12}", token_id) else None
    if row is None or (owner is not None and row.user_id != owner.id):
        raise UserError("no_token", f"no token {token_id!r}")
    if row.revoked is None:
        row.revoked = time.time()
    return row


def open_session(
    db: Session, user: User, ttl_s: float, client: str, *, now: float | None = None
) -> tuple[LoginSession, str]:
    """A browser session for `user` (not committed) and its cookie value."""
    now = time.time() if now is None else now
    # a user's expired sessions go when they sign in again, so the table does not grow forever
    db.execute(
        delete(LoginSession).where(LoginSession.user_id == user.id, LoginSession.expires <= now)
    )
    cookie = secrets.token_urlsafe(32)
    row = LoginSession(
        id_hash=_sha256(cookie),
        user_id=user.id,
        csrf=secrets.token_urlsafe(32),
        created=now,
        expires=now + ttl_s,
        client=client[:64],
    )
    db.add(row)
    db.flush()
    return row, cookie


def session_principal(db: Session, cookie: str, *, now: float | None = None) -> Principal | None:
    """Who the session cookie `cookie` is, or None (unknown, expired, user disabled)."""
    if _SESSION.fullmatch(cookie) is None:
        return None
    now = time.time() if now is None else now
    row = db.get(LoginSession, _sha256(cookie))
    if row is None or row.expires <= now:
        return None
    user = db.get(User, row.user_id)
    if user is None or user.disabled:
        return None
    return Principal(
        user_id=user.id, name=user.name, role=Role(user.role), via="session", csrf=row.csrf
    )


def close_session(db: Session, cookie: str) -> None:
    """End the session `cookie` names, if any."""
    if _SESSION.fullmatch(cookie) is None:
        return
    row = db.get(LoginSession, _sha256(cookie))
    if row is not None:
        db.delete(row)


def csrf_matches(expected: str | None, given: str | None) -> bool:
    """Constant-time comparison of a CSRF token with the session's."""
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


def issue_login_link(db: Session, user: User, ttl_s: float = LOGIN_LINK_TTL_S) -> str:
    """The secret of a one-time login link for `user` (not committed)."""
    _row, secret = issue_token(db, user, LOGIN_LINK_NAME, Role(user.role), ttl_s)
    return secret


def spend_login_link(db: Session, secret: str, *, now: float | None = None) -> User | None:
    """The user a login link signs in, or None (unknown, expired, used, or not a link).

    The link is revoked here (committed by the caller); of two requests racing with one link,
    only the one whose conditional update lands gets the user."""
    now = time.time() if now is None else now
    principal = token_principal(db, secret, now=now)
    if principal is None:
        return None
    token_id = principal.via.removeprefix("token:")
    spent = db.execute(
        update(ApiToken)
        .where(
            ApiToken.id == token_id,
            ApiToken.name == LOGIN_LINK_NAME,
            ApiToken.revoked.is_(None),
        )
        .values(revoked=now)
    )
    if getattr(spent, "rowcount", 0) != 1:
        return None
    return db.get(User, principal.user_id)
