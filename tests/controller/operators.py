"""Operators' credentials for tests: a user of a role and an API token, made in the database
the controller (or a bare app) uses, the way `edgefleet users create` makes them."""

from __future__ import annotations

import uuid

import httpx
from sqlalchemy.orm import Session, sessionmaker

from controller.auth.tokens import issue_token
from controller.auth.users import Role, create_user

TEST_PASSWORD = "correct horse battery staple"


def make_token(sessions: sessionmaker[Session], role: str = "admin", ttl_s: float = 3600) -> str:
    """A new user of `role` and an API token of that role; returns the token's secret."""
    with sessions() as db:
        user = create_user(db, f"{role}-{uuid.uuid4().hex[:8]}", TEST_PASSWORD, Role(role))
        _row, secret = issue_token(db, user, "test", Role(role), ttl_s)
        db.commit()
    return secret


def auth_headers(sessions: sessionmaker[Session], role: str = "admin") -> dict[str, str]:
    """An Authorization header for a new operator of `role`."""
    return {"Authorization": f"Bearer {make_token(sessions, role)}"}


def api_client(base_url: str, sessions: sessionmaker[Session], role: str = "admin") -> httpx.Client:
    """An httpx client signed in as a new operator of `role`; close it (or use `with`)."""
    return httpx.Client(base_url=base_url, timeout=10.0, headers=auth_headers(sessions, role))
