"""Operators over HTTP: every route guarded, login with cookie + CSRF, tokens, users and the
audit log, on a started controller."""

from __future__ import annotations

import re
import uuid

import httpx
import pytest
from fastapi import APIRouter
from fastapi.testclient import TestClient
from sqlalchemy import select

from controller.api.security import DEVICE, METRICS, PUBLIC
from controller.auth.models import User
from controller.auth.tokens import issue_login_link, issue_token
from controller.auth.users import Role, create_user
from tests.controller.operators import TEST_PASSWORD, auth_headers

SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def _user(controller, role: str) -> str:
    name = f"{role}-{uuid.uuid4().hex[:6]}"
    with controller.sessions() as db:
        create_user(db, name, TEST_PASSWORD, Role(role))
        db.commit()
    return name


def _concrete(path: str) -> str:
    """A route path with every parameter filled in."""
    return re.sub(r"\{[^}]+\}", "x" * 12, path)


def test_every_operator_route_answers_401_without_credentials(controller):
    """Reads of device data and every mutating request, route by route, refused when anonymous."""
    # the schema lists every route of every router with its tags
    paths = controller.app.openapi()["paths"]
    checked = 0
    with httpx.Client(base_url=controller.api_url, timeout=10) as anon:
        for path, operations in paths.items():
            for method, operation in operations.items():
                if {PUBLIC, DEVICE, METRICS} & set(operation.get("tags", [])):
                    continue
                response = anon.request(method.upper(), _concrete(path), json={})
                assert response.status_code == 401, (method, path, response.text)
                checked += 1
        # device-facing routes refuse an anonymous caller too, by their own credential
        assert anon.get(f"/api/bundles/{'0' * 64}/file").status_code == 401
        assert anon.post(f"/api/snapshots/{'0' * 32}", content=b"x").status_code == 401
        assert anon.get("/healthz").status_code == 200
    assert checked >= 20


@SQLITE_ONLY
def test_routes_added_later_are_guarded_by_method(controller):
    extra = APIRouter()

    @extra.post("/api/extra")
    def change() -> dict[str, bool]:
        return {"changed": True}

    @extra.get("/api/extra")
    def read() -> dict[str, bool]:
        return {"read": True}

    # the app-wide guard applies to a router included after the app was made
    controller.app.include_router(extra)
    with httpx.Client(base_url=controller.api_url, timeout=10) as client:
        assert client.post("/api/extra").status_code == 401
        viewer = auth_headers(controller.sessions, "viewer")
        assert client.get("/api/extra", headers=viewer).json() == {"read": True}
        assert client.post("/api/extra", headers=viewer).status_code == 403
        operator = auth_headers(controller.sessions, "operator")
        assert client.post("/api/extra", headers=operator).json() == {"changed": True}


@SQLITE_ONLY
def test_browser_login_sets_a_strict_httponly_cookie_and_needs_csrf(controller):
    name = _user(controller, "operator")
    with httpx.Client(base_url=controller.api_url, timeout=10) as browser:
        login = browser.post("/api/auth/login", json={"name": name, "password": TEST_PASSWORD})
        assert login.status_code == 200, login.text
        cookies = login.headers.get_list("set-cookie")
        session = next(c for c in cookies if c.startswith("edgefleet_session="))
        assert "HttpOnly" in session and "SameSite=strict" in session and "Path=/" in session
        assert "Secure" not in session  # served over plain HTTP here
        csrf = login.json()["csrf_token"]
        assert browser.get("/api/auth/csrf").json()["csrf_token"] == csrf
        me = browser.get("/api/auth/me").json()
        assert (me["name"], me["role"], me["via"]) == (name, "operator", "session")
        made = browser.post("/api/tokens", json={"name": "x"}, headers={"X-CSRF-Token": csrf})
        assert made.status_code == 201 and made.json()["role"] == "operator"
        assert browser.post("/api/auth/logout", headers={"X-CSRF-Token": csrf}).status_code == 204
        assert browser.get("/api/auth/me").status_code == 401


def test_a_login_link_signs_a_browser_in_once(controller):
    name = _user(controller, "viewer")
    with controller.sessions() as db:
        user = db.scalar(select(User).where(User.name == name))
        link = issue_login_link(db, user)
        other = issue_token(db, user, "not-a-link", Role.VIEWER, 600)[1]
        db.commit()
    with httpx.Client(base_url=controller.api_url, timeout=10) as browser:
        opened = browser.get("/api/auth/link", params={"token": link})
        assert opened.status_code == 303 and opened.headers["location"] == "/"
        me = browser.get("/api/auth/me").json()
        assert (me["name"], me["role"], me["via"]) == (name, "viewer", "session")
    with httpx.Client(base_url=controller.api_url, timeout=10) as stranger:
        again = stranger.get("/api/auth/link", params={"token": link})
        assert again.status_code == 401 and again.json()["detail"]["reason"] == "bad_link"
        # an ordinary API token is no login link
        token = stranger.get("/api/auth/link", params={"token": other})
        assert token.status_code == 401
        assert stranger.get("/api/auth/me").status_code == 401


@SQLITE_ONLY
def test_the_session_cookie_is_secure_over_tls(controller):
    name = _user(controller, "viewer")
    with TestClient(controller.app, base_url="https://localhost") as client:
        login = client.post("/api/auth/login", json={"name": name, "password": TEST_PASSWORD})
        session = next(
            c for c in login.headers.get_list("set-cookie") if c.startswith("edgefleet_session=")
        )
        assert "Secure" in session


@SQLITE_ONLY
def test_tokens_from_login_are_listed_with_last_use_and_revoked(controller):
    name = _user(controller, "viewer")
    with httpx.Client(base_url=controller.api_url, timeout=10) as anon:
        made = anon.post(
            "/api/auth/token", json={"name": name, "password": TEST_PASSWORD, "token_name": "cli"}
        )
        assert made.status_code == 201 and made.json()["role"] == "viewer"
        secret = made.json()["token"]
    headers = {"Authorization": f"Bearer {secret}"}
    with httpx.Client(base_url=controller.api_url, timeout=10, headers=headers) as me:
        [listed] = me.get("/api/tokens").json()
        assert listed["id"] == made.json()["id"] and "token" not in listed
        assert listed["last_used"] is not None and listed["user"] == name
        assert me.delete(f"/api/tokens/{listed['id']}").status_code == 200
        assert me.get("/api/tokens").status_code == 401


def test_admins_manage_users_and_read_the_audit_log(controller, api_client):
    made = api_client.post(
        "/api/users", json={"name": "olga", "password": TEST_PASSWORD, "role": "viewer"}
    )
    assert made.status_code == 201 and made.json()["role"] == "viewer"
    assert api_client.patch("/api/users/olga", json={"role": "operator"}).json()["role"] == (
        "operator"
    )
    assert api_client.patch("/api/users/olga", json={"disabled": True}).json()["disabled"]
    assert "olga" in [u["name"] for u in api_client.get("/api/users").json()]
    refused = api_client.post("/api/deployments", json={"device": "nope", "bundle": "0" * 64})
    assert refused.status_code == 404

    rows = api_client.get("/api/audit", params={"limit": 4}).json()
    assert [(r["method"], r["action"], r["status"]) for r in rows] == [
        ("POST", "/api/deployments", 404),
        ("PATCH", "/api/users/{name}", 200),
        ("PATCH", "/api/users/{name}", 200),
        ("POST", "/api/users", 201),
    ]
    assert rows[1]["target"] == "name=olga" and rows[0]["client"] == "127.0.0.1"
    assert rows[0]["actor"].startswith("admin-") and rows[0]["detail"].startswith("token:")
    older = api_client.get("/api/audit", params={"before_id": rows[1]["id"], "limit": 2}).json()
    assert [r["id"] for r in older] == [rows[2]["id"], rows[3]["id"]]
    mine = api_client.get("/api/audit", params={"actor": rows[0]["actor"]}).json()
    assert len(mine) == 4
    assert api_client.get("/api/audit", params={"status": 404}).json()[0]["id"] == rows[0]["id"]
