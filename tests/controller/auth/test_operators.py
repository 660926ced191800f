"""Users, roles, password hashes, API tokens and sessions against both databases."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from sqlalchemy.orm import Session, sessionmaker

from controller.auth.audit import AuditQuery, AuditRecord, query, record
from controller.auth.bootstrap import make_bootstrap_secret, redeem_bootstrap_secret
from controller.auth.tokens import (
    close_session,
    issue_token,
    list_tokens,
    open_session,
    revoke_token,
    session_principal,
    token_principal,
)
from controller.auth.users import (
    Role,
    UserError,
    check_password,
    create_user,
    get_user,
    set_disabled,
    set_password,
    set_role,
)
from controller.db import make_engine, session_factory, upgrade_database

PASSWORD = "a long enough password"


@pytest.fixture
def sessions(db_url) -> Iterator[sessionmaker[Session]]:
    upgrade_database(db_url)
    engine = make_engine(db_url)
    try:
        yield session_factory(engine)
    finally:
        engine.dispose()


def test_roles_include_the_ones_below():
    assert Role.ADMIN.allows(Role.OPERATOR) and Role.OPERATOR.allows(Role.VIEWER)
    assert not Role.VIEWER.allows(Role.OPERATOR) and not Role.OPERATOR.allows(Role.ADMIN)


def test_passwords_are_argon2_hashed_and_checked(sessions):
    with sessions() as db:
        user = create_user(db, "alice", PASSWORD, Role.OPERATOR)
        db.commit()
        assert user.password_hash.startswith("$argon2id$") and PASSWORD not in user.password_hash
        assert check_password(db, "alice", PASSWORD) is not None
        assert check_password(db, "alice", PASSWORD + "x") is None
        assert check_password(db, "nobody", PASSWORD) is None
        set_password(db, user, "another long password")
        assert check_password(db, "alice", PASSWORD) is None


def test_bad_names_short_passwords_and_duplicates_are_refused(sessions):
    with sessions() as db:
        create_user(db, "bob", PASSWORD, Role.VIEWER)
        for name, password, reason in [
            ("Bob", PASSWORD, "bad_name"),
            ("b", PASSWORD, "bad_name"),
            ("bob; drop", PASSWORD, "bad_name"),
            ("carol", "short", "bad_password"),
            ("bob", PASSWORD, "user_exists"),
        ]:
            with pytest.raises(UserError) as refused:
                create_user(db, name, password, Role.VIEWER)
            assert refused.value.reason == reason


def test_the_last_admin_stays_an_enabled_admin(sessions):
    with sessions() as db:
        admin = create_user(db, "root", PASSWORD, Role.ADMIN)
        with pytest.raises(UserError, match="last_admin"):
            set_disabled(db, admin, True)
        with pytest.raises(UserError, match="last_admin"):
            set_role(db, admin, Role.OPERATOR)
        create_user(db, "root2", PASSWORD, Role.ADMIN)
        set_role(db, admin, Role.OPERATOR)
        assert get_user(db, "root").role == "operator"


def test_tokens_are_hashed_scoped_expiring_and_revocable(sessions):
    with sessions() as db:
        user = create_user(db, "dave", PASSWORD, Role.OPERATOR)
        row, secret = issue_token(db, user, "ci", Role.VIEWER, 60)
        db.commit()
        assert row.secret_hash != secret and secret not in row.secret_hash
        principal = token_principal(db, secret)
        assert principal is not None and principal.role == Role.VIEWER
        assert principal.via == f"token:{row.id}" and row.last_used is not None
        assert token_principal(db, secret, now=time.time() + 61) is None
        with pytest.raises(UserError, match="scope_too_wide"):
            issue_token(db, user, "up", Role.ADMIN, 60)
        with pytest.raises(UserError, match="bad_ttl"):
            issue_token(db, user, "forever", Role.VIEWER, 10 * 366 * 86400)
        revoke_token(db, row.id)
        assert token_principal(db, secret) is None
        assert [t.id for t in list_tokens(db, user)] == [row.id]
        with pytest.raises(UserError, match="no_token"):
            revoke_token(db, "ffffffffffff")


def test_disabling_a_user_ends_its_tokens_and_sessions(sessions):
    with sessions() as db:
        create_user(db, "root", PASSWORD, Role.ADMIN)
        user = create_user(db, "erin", PASSWORD, Role.OPERATOR)
        _row, secret = issue_token(db, user, "ci", Role.OPERATOR, 60)
        _session, cookie = open_session(db, user, 60, "127.0.0.1")
        db.commit()
        assert session_principal(db, cookie) is not None
        set_disabled(db, user, True)
        db.commit()
        assert token_principal(db, secret) is None and session_principal(db, cookie) is None
        set_disabled(db, user, False)
        assert token_principal(db, secret) is None  # revoked, not paused


def test_sessions_carry_a_csrf_token_and_end_on_logout(sessions):
    with sessions() as db:
        user = create_user(db, "frank", PASSWORD, Role.VIEWER)
        row, cookie = open_session(db, user, 60, "10.0.0.1")
        db.commit()
        principal = session_principal(db, cookie)
        assert principal is not None and principal.by_cookie and principal.csrf == row.csrf
        assert session_principal(db, cookie, now=time.time() + 61) is None
        close_session(db, cookie)
        db.commit()
        assert session_principal(db, cookie) is None


def test_the_bootstrap_secret_makes_one_admin_once(sessions):
    secret = make_bootstrap_secret(sessions)
    assert secret is not None
    with sessions() as db:
        with pytest.raises(UserError, match="bootstrap_refused"):
            redeem_bootstrap_secret(db, "wrong", "root", PASSWORD)
        admin = redeem_bootstrap_secret(db, secret, "root", PASSWORD)
        db.commit()
        assert admin.role == "admin"
    with sessions() as db, pytest.raises(UserError, match="bootstrap_refused"):
        redeem_bootstrap_secret(db, secret, "root2", PASSWORD)
    assert make_bootstrap_secret(sessions) is None  # a user exists: no new secret


def test_audit_rows_filter_and_page(sessions):
    with sessions() as db:
        for n in range(7):
            actor = "alice" if n % 2 else "bob"
            record(db, AuditRecord(actor, "POST", "/api/x", f"id={n}", 200 + n, "127.0.0.1"))
        db.commit()
        first = query(db, AuditQuery(limit=3))
        assert [r.target for r in first] == ["id=6", "id=5", "id=4"]
        second = query(db, AuditQuery(limit=3, before_id=first[-1].id))
        assert [r.target for r in second] == ["id=3", "id=2", "id=1"]
        assert {r.actor for r in query(db, AuditQuery(actor="alice"))} == {"alice"}
        assert [r.status for r in query(db, AuditQuery(status=204))] == [204]
        assert query(db, AuditQuery(method="delete")) == []
