"""Attacks on the REST API of a controller started on its defaults (auth on): each case is
refused with its status and reason, and nothing changes in the database (the audit log, which
records the refused attempt, aside)."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import closing
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import inspect, select, text

from controller.auth.bootstrap import make_bootstrap_secret
from controller.auth.models import ApiToken, AuditEntry, LoginSession, User
from controller.auth.tokens import issue_token
from controller.auth.transfer import TransferPurpose, TransferTokens
from controller.auth.users import Role, set_disabled, set_role
from controller.db import Base, Device
from controller.server import Controller
from controller.settings import ControllerSettings, HttpSettings, MqttSettings
from protocol.messages import TRANSFER_TOKEN_HEADER
from tests.controller.operators import TEST_PASSWORD, make_token

JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 100 + b"\xff\xd9"
DEVICE = "cam-a"
# the audit log records refused requests on purpose; the scheduler's job store moves each tick
CHANGES_ON_ITS_OWN = frozenset({"audit_log", "scheduler_jobs", "apscheduler_jobs"})


@pytest.fixture
def ctl(tmp_path, mosquitto) -> Iterator[Controller]:
    """A controller on its default settings but for its folder, broker port and API port."""
    settings = ControllerSettings(
        data_dir=tmp_path / "controller",
        mqtt=MqttSettings(port=mosquitto.port, client_id=f"sec-{uuid.uuid4().hex[:8]}"),
        http=HttpSettings(port=0),
    )
    controller = Controller(settings).start()
    try:
        now = time.time()
        with controller.sessions.begin() as db:
            db.add(Device(id=DEVICE, online=True, first_seen=now, last_seen=now))
        yield controller
    finally:
        controller.stop()


@pytest.fixture
def anon(ctl) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=ctl.api_url, timeout=10.0) as client:
        yield client


def client_as(ctl: Controller, role: str) -> httpx.Client:
    token = make_token(ctl.sessions, role)
    return httpx.Client(
        base_url=ctl.api_url, timeout=10.0, headers={"Authorization": f"Bearer {token}"}
    )


def state(ctl: Controller) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table but those in CHANGES_ON_ITS_OWN, and tokens' times of use."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    with ctl.engine.connect() as conn:
        present = set(inspect(conn).get_table_names())
        for table in Base.metadata.sorted_tables:
            if table.name in CHANGES_ON_ITS_OWN or table.name not in present:
                continue
            # a token's time of use is bookkeeping, not a change an attacker made
            columns = [c for c in table.columns if c.name != "last_used"]
            rows = conn.execute(select(*columns)).all()
            out[table.name] = sorted(tuple(map(repr, r)) for r in rows)
    return out


def reason(response: httpx.Response) -> str:
    detail = response.json()["detail"]
    return detail["reason"] if isinstance(detail, dict) else str(detail)


def last_audit(ctl: Controller) -> AuditEntry | None:
    with ctl.sessions() as db:
        return db.scalar(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(1))


def read_answer(sock: socket.socket) -> str:
    """Everything the server sends until it closes the connection."""
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data.decode()


def login_session(ctl: Controller, role: str = "operator") -> tuple[httpx.Client, str]:
    """A browser-like client signed in with a session cookie, and its CSRF token."""
    name = f"{role}-{uuid.uuid4().hex[:6]}"
    with ctl.sessions() as db:
        from controller.auth.users import create_user

        create_user(db, name, TEST_PASSWORD, Role(role))
        db.commit()
    browser = httpx.Client(base_url=ctl.api_url, timeout=10.0)
    response = browser.post("/api/auth/login", json={"name": name, "password": TEST_PASSWORD})
    assert response.status_code == 200, response.text
    return browser, response.json()["csrf_token"]


DEVICE_DATA_READS = [
    "/api/devices",
    f"/api/devices/{DEVICE}",
    "/api/detections",
    "/api/events",
    f"/api/health/{DEVICE}",
    "/api/summary",
    "/api/deployments",
    "/api/bundles",
    f"/api/snapshots/{'0' * 32}",
    "/api/users",
    "/api/tokens",
    "/api/audit",
    "/api/auth/me",
]


@pytest.mark.parametrize("path", DEVICE_DATA_READS)
def test_unauthenticated_read_of_device_data_is_refused(ctl, anon, path):
    """Threat: anyone who reaches the API reads the fleet's devices, detections and events."""
    before = state(ctl)
    response = anon.get(path)
    assert response.status_code == 401 and reason(response) == "not_authenticated"
    assert response.headers["www-authenticate"] == "Bearer"
    assert state(ctl) == before


def test_unauthenticated_snapshot_request_is_refused(ctl, anon):
    """Threat: an unauthenticated POST makes a camera send a frame (the reported finding)."""
    before = state(ctl)
    response = anon.post(f"/api/devices/{DEVICE}/snapshot", json={"camera": "cam0", "track_id": 1})
    assert response.status_code == 401 and reason(response) == "not_authenticated"
    assert state(ctl) == before
    assert not list((ctl.settings.data_dir / "snapshots").glob("*.pending"))
    audit = last_audit(ctl)
    assert audit is not None and (audit.actor, audit.status) == ("-", 401)
    assert audit.action == "/api/devices/{device_id}/snapshot" and audit.target == "device_id=cam-a"


def test_unauthenticated_deployment_is_refused(ctl, anon):
    """Threat: an anonymous client deploys a bundle to a device."""
    before = state(ctl)
    response = anon.post("/api/deployments", json={"device": DEVICE, "bundle": "0" * 64})
    assert response.status_code == 401 and reason(response) == "not_authenticated"
    assert state(ctl) == before


def test_unauthenticated_bundle_upload_is_refused(ctl, anon):
    """Threat: an anonymous client stores bundles (disk use, later deployment)."""
    before = state(ctl)
    response = anon.post("/api/bundles", content=b"x" * 2048)
    assert response.status_code == 401 and reason(response) == "not_authenticated"
    assert state(ctl) == before
    assert list(ctl.bundles.incoming.iterdir()) == []


def test_unauthenticated_trust_push_is_refused(ctl, anon):
    """Threat: an anonymous client pushes root documents to every device."""
    before = state(ctl)
    response = anon.post("/api/trust", content=b'{"roots": []}')
    assert response.status_code == 401 and reason(response) == "not_authenticated"
    assert state(ctl) == before


def test_viewer_cannot_mutate(ctl):
    """Threat: a read-only operator changes what devices run."""
    with client_as(ctl, "viewer") as viewer:
        before = state(ctl)
        response = viewer.post("/api/deployments", json={"device": DEVICE, "bundle": "0" * 64})
        assert response.status_code == 403 and reason(response) == "forbidden"
        assert viewer.get("/api/devices").status_code == 200
    assert state(ctl) == before


def test_operator_cannot_manage_users(ctl):
    """Threat: an operator makes themselves an admin account."""
    with client_as(ctl, "operator") as operator:
        before = state(ctl)
        body = {"name": "mallory", "password": TEST_PASSWORD, "role": "admin"}
        response = operator.post("/api/users", json=body)
        assert response.status_code == 403 and reason(response) == "forbidden"
        assert operator.get("/api/audit").status_code == 403
    assert state(ctl) == before


def test_expired_token_is_refused(ctl):
    """Threat: a token keeps working past its expiry."""
    with ctl.sessions() as db:
        user = db.scalar(select(User).limit(1)) or _user(db, "admin")
        _row, secret = issue_token(db, user, "old", Role.ADMIN, 60, now=time.time() - 3600)
        db.commit()
    before = state(ctl)
    response = httpx.get(
        f"{ctl.api_url}/api/devices", headers={"Authorization": f"Bearer {secret}"}
    )
    assert response.status_code == 401 and reason(response) == "not_authenticated"
    assert state(ctl) == before


def _user(db: Any, role: str) -> User:
    from controller.auth.users import create_user

    user = create_user(db, f"{role}-{uuid.uuid4().hex[:6]}", TEST_PASSWORD, Role(role))
    db.flush()
    return user


def test_revoked_token_is_refused(ctl):
    """Threat: a revoked (leaked) token keeps working."""
    with client_as(ctl, "admin") as admin:
        made = admin.post("/api/tokens", json={"name": "leaked", "role": "operator"}).json()
        assert admin.delete(f"/api/tokens/{made['id']}").status_code == 200
    before = state(ctl)
    leaked = {"Authorization": f"Bearer {made['token']}"}
    response = httpx.post(
        f"{ctl.api_url}/api/deployments",
        json={"device": DEVICE, "bundle": "0" * 64},
        headers=leaked,
    )
    assert response.status_code == 401 and reason(response) == "not_authenticated"
    assert state(ctl) == before


def test_disabled_users_token_is_refused(ctl):
    """Threat: a token outlives the account of someone who left."""
    token = make_token(ctl.sessions, "operator")
    with ctl.sessions() as db:
        user = db.scalar(select(User).where(User.role == "operator"))
        assert user is not None
        set_disabled(db, user, True)
        db.commit()
    before = state(ctl)
    response = httpx.get(f"{ctl.api_url}/api/devices", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert state(ctl) == before


def test_token_acts_with_the_users_lowered_role(ctl):
    """Threat: an operator's token keeps operator rights after the user became a viewer."""
    token = make_token(ctl.sessions, "operator")
    with ctl.sessions() as db:
        user = db.scalar(select(User).where(User.role == "operator"))
        assert user is not None
        set_role(db, user, Role.VIEWER)
        db.commit()
    before = state(ctl)
    response = httpx.post(
        f"{ctl.api_url}/api/deployments",
        json={"device": DEVICE, "bundle": "0" * 64},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 403 and reason(response) == "forbidden"
    assert state(ctl) == before


def test_forged_token_is_refused(ctl, anon):
    """Threat: a token of the right shape guessed or forged by the attacker."""
    make_token(ctl.sessions, "admin")
    with ctl.sessions() as db:
        real = db.scalar(select(ApiToken).limit(1))
        assert real is not None
    forged = f"ef_{real.id}_{'A' * 43}"
    before = state(ctl)
    response = anon.get("/api/devices", headers={"Authorization": f"Bearer {forged}"})
    assert response.status_code == 401 and reason(response) == "not_authenticated"
    assert state(ctl) == before


def test_malformed_authorization_header_is_refused(ctl, anon):
    """Threat: a Basic or empty Authorization header confuses the check into letting it pass."""
    before = state(ctl)
    for header in ("Basic YWRtaW46YWRtaW4=", "Bearer", "Bearer  x y", "bearer ef_"):
        response = anon.post(
            "/api/deployments",
            json={"device": DEVICE, "bundle": "0" * 64},
            headers={"Authorization": header},
        )
        assert response.status_code == 401, header
        assert reason(response) in ("bad_credentials", "not_authenticated")
    assert state(ctl) == before


def test_forged_session_cookie_is_refused(ctl, anon):
    """Threat: a made-up session cookie (and a matching made-up CSRF header)."""
    before = state(ctl)
    cookie = "A" * 43
    anon.cookies.set("edgefleet_session", cookie)
    response = anon.post(
        "/api/deployments",
        json={"device": DEVICE, "bundle": "0" * 64},
        headers={"X-CSRF-Token": "B" * 43},
    )
    assert response.status_code == 401 and reason(response) == "not_authenticated"
    assert state(ctl) == before


def test_cookie_mutation_without_csrf_token_is_refused(ctl):
    """Threat: cross-site request forgery riding a signed-in browser's cookie."""
    browser, _csrf = login_session(ctl)
    with closing(browser):
        before = state(ctl)
        response = browser.post("/api/deployments", json={"device": DEVICE, "bundle": "0" * 64})
        assert response.status_code == 403 and reason(response) == "csrf_missing"
        assert browser.get("/api/devices").status_code == 200  # reads need no CSRF token
    assert state(ctl) == before


def test_cookie_mutation_with_wrong_csrf_token_is_refused(ctl):
    """Threat: a forged request guessing, or reusing another session's, CSRF token."""
    browser, _csrf = login_session(ctl)
    other, other_csrf = login_session(ctl)
    with closing(browser), closing(other):
        before = state(ctl)
        for wrong in ("x" * 43, other_csrf):
            response = browser.post(
                "/api/deployments",
                json={"device": DEVICE, "bundle": "0" * 64},
                headers={"X-CSRF-Token": wrong},
            )
            assert response.status_code == 403 and reason(response) == "csrf_mismatch"
    assert state(ctl) == before


def test_session_cookie_is_dead_after_logout(ctl):
    """Threat: a stolen session cookie replayed after its owner logged out."""
    browser, csrf = login_session(ctl)
    with closing(browser):
        cookie = browser.cookies["edgefleet_session"]
        assert browser.post("/api/auth/logout", headers={"X-CSRF-Token": csrf}).status_code == 204
    before = state(ctl)
    with httpx.Client(base_url=ctl.api_url, timeout=10.0) as replay:
        replay.cookies.set("edgefleet_session", cookie)
        assert replay.get("/api/devices").status_code == 401
    assert state(ctl) == before


def test_bad_host_header_is_refused(ctl, anon):
    """Threat: DNS rebinding, or an API answering for any host name it is reached by."""
    with client_as(ctl, "admin") as admin:
        before = state(ctl)
        response = admin.get("/api/devices", headers={"Host": "evil.example.com"})
        assert response.status_code == 400 and response.text == "Invalid host header"
        response = admin.post(
            "/api/deployments",
            json={"device": DEVICE, "bundle": "0" * 64},
            headers={"Host": "rebind.attacker.test:8080"},
        )
        assert response.status_code == 400
        assert state(ctl) == before


def test_oversized_body_is_refused_before_it_is_read(ctl):
    """Threat: a huge declared body held in memory or on disk before the size is checked."""
    token = make_token(ctl.sessions, "admin")
    before = state(ctl)
    port = ctl.http_port
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        # declares 10 GB and sends none of it: the answer comes without waiting for the body
        sock.sendall(
            (
                "POST /api/deployments HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
                "Content-Length: 10000000000\r\n\r\n"
            ).encode()
        )
        answer = read_answer(sock)
    assert answer.startswith("HTTP/1.1 413"), answer
    assert "body_too_large" in answer
    assert state(ctl) == before


def test_oversized_chunked_body_is_refused(ctl):
    """Threat: a body without Content-Length that grows past every cap."""

    def chunks() -> Iterator[bytes]:
        yield b'{"device": "cam-a", "bundle": "'
        for _ in range(40):
            yield b"0" * 65536
        yield b'"}'

    with client_as(ctl, "admin") as admin:
        before = state(ctl)
        response = admin.post(
            "/api/deployments", content=chunks(), headers={"Content-Type": "application/json"}
        )
    assert response.status_code == 413 and reason(response) == "body_too_large"
    assert state(ctl) == before


def test_login_brute_force_per_user_is_throttled(ctl, anon):
    """Threat: guessing one user's password online."""
    with ctl.sessions() as db:
        victim = _user(db, "admin").name
        db.commit()
    for _ in range(5):
        wrong = anon.post("/api/auth/login", json={"name": victim, "password": "guess-guess-1"})
        assert wrong.status_code == 401 and reason(wrong) == "bad_login"
    before = state(ctl)
    # even the right password is refused while the window lasts
    right = anon.post("/api/auth/login", json={"name": victim, "password": TEST_PASSWORD})
    assert right.status_code == 429 and reason(right) == "too_many_attempts"
    assert int(right.headers["retry-after"]) > 0
    assert "edgefleet_session" not in right.cookies
    token = anon.post("/api/auth/token", json={"name": victim, "password": TEST_PASSWORD})
    assert token.status_code == 429
    assert state(ctl) == before


def test_login_brute_force_per_client_is_throttled(ctl, anon):
    """Threat: one client spraying one password over many user names."""
    for n in range(20):
        wrong = anon.post("/api/auth/login", json={"name": f"user{n}", "password": "Winter2026!"})
        assert wrong.status_code == 401
    before = state(ctl)
    response = anon.post("/api/auth/login", json={"name": "user99", "password": "Winter2026!"})
    assert response.status_code == 429 and reason(response) == "too_many_attempts"
    assert state(ctl) == before
    with ctl.sessions() as db:
        assert db.scalar(select(LoginSession).limit(1)) is None


def test_token_scope_escalation_is_refused(ctl):
    """Threat: a viewer or operator mints a token with a higher role than their own."""
    for role, wanted in (("viewer", "operator"), ("viewer", "admin"), ("operator", "admin")):
        with client_as(ctl, role) as low:
            before = state(ctl)
            response = low.post("/api/tokens", json={"name": "up", "role": wanted})
            assert response.status_code == 403 and reason(response) == "scope_too_wide"
            assert state(ctl) == before


def test_listing_everyones_tokens_needs_admin(ctl):
    """Threat: an operator learns who holds which tokens."""
    with client_as(ctl, "operator") as operator:
        before = state(ctl)
        response = operator.get("/api/tokens", params={"all": "true"})
        assert response.status_code == 403 and reason(response) == "forbidden"
        assert state(ctl) == before
        assert all(t["user"].startswith("operator-") for t in operator.get("/api/tokens").json())


def test_revoking_someone_elses_token_is_refused(ctl):
    """Threat: an operator revokes the admin's token (denial of service)."""
    with client_as(ctl, "admin") as admin, client_as(ctl, "operator") as operator:
        [admins] = admin.get("/api/tokens").json()
        before = state(ctl)
        response = operator.delete(f"/api/tokens/{admins['id']}")
        assert response.status_code == 404 and reason(response) == "no_token"
        assert state(ctl) == before
        assert admin.get("/api/devices").status_code == 200


def _new_pending(ctl: Controller) -> str:
    from controller.fleet.snapshots import SnapshotStore

    store = SnapshotStore(ctl.settings.data_dir / "snapshots", ctl.settings.max_snapshot_bytes)
    return store.new()


def test_snapshot_upload_without_token_is_refused(ctl, anon):
    """Threat: anyone uploads a picture in a camera's name (or fills the disk)."""
    snapshot_id = _new_pending(ctl)
    before = state(ctl)
    response = anon.post(f"/api/snapshots/{snapshot_id}", content=JPEG)
    assert response.status_code == 401 and reason(response) == "no_transfer_token"
    folder = ctl.settings.data_dir / "snapshots"
    assert sorted(p.name for p in folder.iterdir()) == [f"{snapshot_id}.pending"]
    assert state(ctl) == before


def test_snapshot_upload_with_another_snapshots_token_is_refused(ctl, anon):
    """Threat: a device reuses its upload token to overwrite a different snapshot."""
    mine, theirs = _new_pending(ctl), _new_pending(ctl)
    token = ctl.transfer_tokens.issue(TransferPurpose.SNAPSHOT_UPLOAD, mine, DEVICE)
    before = state(ctl)
    response = anon.post(
        f"/api/snapshots/{theirs}", content=JPEG, headers={TRANSFER_TOKEN_HEADER: token}
    )
    assert response.status_code == 401 and reason(response) == "bad_transfer_token"
    assert not (ctl.settings.data_dir / "snapshots" / f"{theirs}.jpg").exists()
    assert state(ctl) == before


def test_snapshot_upload_for_an_id_not_pending_is_refused_before_reading(ctl, anon):
    """Threat: a valid token for an id no longer waited for, sending a large body."""
    snapshot_id = uuid.uuid4().hex
    token = ctl.transfer_tokens.issue(TransferPurpose.SNAPSHOT_UPLOAD, snapshot_id, DEVICE)
    before = state(ctl)
    response = anon.post(
        f"/api/snapshots/{snapshot_id}", content=JPEG, headers={TRANSFER_TOKEN_HEADER: token}
    )
    assert response.status_code == 404
    assert response.json()["detail"] == "no snapshot pending under this id"
    assert state(ctl) == before
    assert not (ctl.settings.data_dir / "snapshots" / f"{snapshot_id}.jpg").exists()


def test_snapshot_upload_over_the_cap_is_refused_by_its_declared_size(ctl):
    """Threat: a device (or thief of its token) sends a body far over the snapshot cap."""
    snapshot_id = _new_pending(ctl)
    token = ctl.transfer_tokens.issue(TransferPurpose.SNAPSHOT_UPLOAD, snapshot_id, DEVICE)
    before = state(ctl)
    with socket.create_connection(("127.0.0.1", ctl.http_port), timeout=5) as sock:
        sock.sendall(
            (
                f"POST /api/snapshots/{snapshot_id} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"{TRANSFER_TOKEN_HEADER}: {token}\r\nContent-Length: {1 << 40}\r\n\r\n"
            ).encode()
        )
        answer = read_answer(sock)
    assert answer.startswith("HTTP/1.1 413"), answer
    assert "body_too_large" in answer
    assert not (ctl.settings.data_dir / "snapshots" / f"{snapshot_id}.jpg").exists()
    assert state(ctl) == before


def test_bundle_download_without_token_is_refused(ctl, anon):
    """Threat: anyone downloads the fleet's models (intellectual property)."""
    digest = "a" * 64
    before = state(ctl)
    response = anon.get(f"/api/bundles/{digest}/file")
    assert response.status_code == 401 and reason(response) == "not_authenticated"
    assert state(ctl) == before


def test_bundle_download_with_a_token_for_another_bundle_is_refused(ctl, anon):
    """Threat: a device's offer token for one bundle opens any other bundle."""
    token = ctl.transfer_tokens.issue(TransferPurpose.BUNDLE_FILE, "b" * 64, DEVICE)
    before = state(ctl)
    response = anon.get(f"/api/bundles/{'a' * 64}/file", headers={TRANSFER_TOKEN_HEADER: token})
    assert response.status_code == 401 and reason(response) == "bad_transfer_token"
    assert state(ctl) == before


def test_expired_or_foreign_transfer_token_is_refused(ctl, anon):
    """Threat: an old offer's token, or one signed with another controller's key."""
    digest = "c" * 64
    old = ctl.transfer_tokens.issue(TransferPurpose.BUNDLE_FILE, digest, DEVICE, now=0.0)
    foreign = TransferTokens(b"k" * 32).issue(TransferPurpose.BUNDLE_FILE, digest, DEVICE)
    snapshot_kind = ctl.transfer_tokens.issue(TransferPurpose.SNAPSHOT_UPLOAD, digest, DEVICE)
    before = state(ctl)
    for token in (old, foreign, snapshot_kind, "t1.cam-a.9999999999." + "0" * 64):
        response = anon.get(f"/api/bundles/{digest}/file", headers={TRANSFER_TOKEN_HEADER: token})
        assert response.status_code == 401 and reason(response) == "bad_transfer_token"
    assert state(ctl) == before


@pytest.mark.parametrize(
    "path",
    [
        "/api/devices/' OR '1'='1",
        "/api/devices/cam-a; DROP TABLE devices",
        "/api/health/%00",
        "/api/bundles/../../etc/passwd",
        "/api/devices/" + "x" * 5000,
    ],
)
def test_odd_ids_change_nothing(ctl, path):
    """Threat: SQL injection or path tricks through ids in the URL."""
    with client_as(ctl, "admin") as admin:
        before = state(ctl)
        response = admin.get(path)
        assert response.status_code in (404, 200)
        if response.status_code == 200:
            assert response.json() == []  # the health of a device that does not exist
        revoke = admin.delete("/api/tokens/'; DROP TABLE auth_tokens; --")
        assert revoke.status_code == 404 and reason(revoke) == "no_token"
        patch = admin.patch("/api/users/' OR 1=1 --", json={"disabled": True})
        assert patch.status_code == 404 and reason(patch) == "no_user"
        assert state(ctl) == before
    with ctl.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM devices")).scalar() == 1


def test_bootstrap_secret_works_once(ctl, anon):
    """Threat: the first-admin secret from the log replayed to make a second admin."""
    with ctl.sessions() as db:
        assert db.scalar(select(User).limit(1)) is None
    secret = make_bootstrap_secret(ctl.sessions)
    assert secret is not None
    made = anon.post(
        "/api/auth/bootstrap", json={"secret": secret, "name": "root", "password": TEST_PASSWORD}
    )
    assert made.status_code == 201, made.text
    before = state(ctl)
    again = anon.post(
        "/api/auth/bootstrap", json={"secret": secret, "name": "evil", "password": TEST_PASSWORD}
    )
    assert again.status_code == 403 and reason(again) == "bootstrap_refused"
    assert state(ctl) == before


def test_guessed_bootstrap_secret_is_refused(ctl, anon):
    """Threat: guessing the first-admin secret of a fresh controller."""
    assert make_bootstrap_secret(ctl.sessions) is not None
    before = state(ctl)
    response = anon.post(
        "/api/auth/bootstrap", json={"secret": "guess", "name": "evil", "password": TEST_PASSWORD}
    )
    assert response.status_code == 403 and reason(response) == "bootstrap_refused"
    assert state(ctl) == before


def test_metrics_need_a_token_off_loopback(ctl):
    """Threat: fleet size and traffic read by anyone on the network."""
    # TestClient's peer is not a loopback address, like a remote scraper
    before = state(ctl)
    with TestClient(ctl.app, base_url="http://localhost") as remote:
        refused = remote.get("/metrics")
        assert refused.status_code == 401 and reason(refused) == "not_authenticated"
        assert remote.get("/healthz").status_code in (200, 503)
    local = httpx.get(f"{ctl.api_url}/metrics", timeout=10)
    assert local.status_code == 200 and "edgefleet_devices" in local.text
    assert state(ctl) == before
