"""Operators' accounts: roles, argon2 password hashes, and the user operations the API and the
CLI share (create, list, disable, change role, check a password)."""

from __future__ import annotations

import enum
import re
import time

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from controller.auth.models import ApiToken, LoginSession, User

USER_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{1,63}$")
MIN_PASSWORD = 10
MAX_PASSWORD = 1024

_HASHER = PasswordHasher()
# verified against when the user does not exist, so both answers take the same time
_DUMMY_HASH = _HASHER.hash("edgefleet-no-such-user")


class Role(enum.StrEnum):
    """What an operator may do: read (viewer), change the fleet (operator), manage people
    (admin). Each role includes the ones before it."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _RANKS[self]

    def allows(self, needed: Role) -> bool:
        """Whether this role includes `needed`."""
        return self.rank >= needed.rank


_RANKS = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}


class UserError(ValueError):
    """A user operation refused; `reason` is a stable code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def hash_password(password: str) -> str:
    """An argon2id hash of `password`; raises UserError when it is too short or too long."""
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise UserError(
            "bad_password", f"a password has {MIN_PASSWORD} to {MAX_PASSWORD} characters"
        )
    return _HASHER.hash(password)


def password_matches(password_hash: str, password: str) -> bool:
    """Whether `password` matches `password_hash`; never raises."""
    try:
        return _HASHER.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def user_count(db: Session) -> int:
    return db.scalar(select(func.count()).select_from(User)) or 0


def create_user(db: Session, name: str, password: str, role: Role) -> User:
    """Add a user (not committed). Raises UserError (bad_name, bad_password, user_exists)."""
    if not USER_NAME.fullmatch(name):
        raise UserError("bad_name", "a user name is 2-64 of a-z 0-9 . _ - (lower case)")
    if db.scalar(select(User).where(User.name == name)) is not None:
        raise UserError("user_exists", f"user {name!r} exists")
    now = time.time()
    user = User(
        name=name,
        password_hash=hash_password(password),
        role=Role(role).value,
        disabled=False,
        created=now,
        updated=now,
    )
    db.add(user)
    db.flush()
    return user


def get_user(db: Session, name: str) -> User:
    """The user called `name`; raises UserError(no_user)."""
    user = db.scalar(select(User).where(User.name == name))
    if user is None:
        raise UserError("no_user", f"no user {name!r}")
    return user


def list_users(db: Session) -> list[User]:
    return list(db.scalars(select(User).order_by(User.name)))


def _admins_left(db: Session, without: User) -> int:
    query = (
        select(func.count())
        .select_from(User)
        .where(User.role == Role.ADMIN.value, User.disabled.is_(False), User.id != without.id)
    )
    return db.scalar(query) or 0


def set_disabled(db: Session, user: User, disabled: bool) -> None:
    """Disable (ending its sessions and tokens) or enable `user`; the last admin stays.

    Raises UserError(last_admin).
    """
    if disabled and user.role == Role.ADMIN.value and _admins_left(db, user) == 0:
        raise UserError("last_admin", "the last enabled admin cannot be disabled")
    user.disabled = disabled
    user.updated = time.time()
    if disabled:
        _end_credentials(db, user)


def set_role(db: Session, user: User, role: Role) -> None:
    """Change `user`'s role; its tokens never keep a higher role than the user has.

    Raises UserError(last_admin).
    """
    role = Role(role)
    if user.role == Role.ADMIN.value and role != Role.ADMIN and _admins_left(db, user) == 0:
        raise UserError("last_admin", "the last enabled admin keeps the admin role")
    user.role = role.value
    user.updated = time.time()
    for token in db.scalars(select(ApiToken).where(ApiToken.user_id == user.id)):
        if not role.allows(Role(token.role)):
            token.role = role.value


def set_password(db: Session, user: User, password: str) -> None:
    """A new password for `user`; its browser sessions end. Raises UserError(bad_password)."""
    user.password_hash = hash_password(password)
    user.updated = time.time()
    for session in db.scalars(select(LoginSession).where(LoginSession.user_id == user.id)):
        db.delete(session)


def check_password(db: Session, name: str, password: str) -> User | None:
    """The enabled user `name` when `password` is theirs, else None (same time either way)."""
    user = db.scalar(select(User).where(User.name == name)) if len(name) <= 64 else None
    if user is None or len(password) > MAX_PASSWORD:
        password_matches(_DUMMY_HASH, password[:MAX_PASSWORD])
        return None
    if not password_matches(user.password_hash, password) or user.disabled:
        return None
    if _HASHER.check_needs_rehash(user.password_hash):
        user.password_hash = _HASHER.hash(password)
    return user


def _end_credentials(db: Session, user: User) -> None:
    now = time.time()
    for token in db.scalars(select(ApiToken).where(ApiToken.user_id == user.id)):
        if token.revoked is None:
            token.revoked = now
    for session in db.scalars(select(LoginSession).where(LoginSession.user_id == user.id)):
        db.delete(session)
