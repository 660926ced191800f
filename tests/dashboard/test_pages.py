"""The dashboard's pages over HTTP, without a browser: sign-in, roles, CSRF, escaping,
filters and paging done by the database, and the live stream."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator
from urllib.parse import quote

import httpx
import pytest
from fastapi.testclient import TestClient

from controller.dashboard.bundles import bundle_signatures
from tests.dashboard.conftest import (
    ATTRIBUTE,
    EVIL_DEVICE,
    SCRIPT,
    Fleet,
    add_detection,
    started_fleet,
)
from tests.database import fresh_postgres

PAGES = [
    "/",
    "/devices",
    f"/devices/{quote(EVIL_DEVICE, safe='')}",
    "/devices/cam-01",
    "/bundles",
    "/rollouts",
    "/enrollment",
    "/audit",
    "/users",
]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def fleet(request, tmp_path_factory, command_key) -> Iterator[Fleet]:
    """The seeded fleet on each database: the pages' queries are SQL of both dialects."""
    workdir = tmp_path_factory.mktemp("dashboard-pages")
    if request.param == "sqlite":
        url = f"sqlite:///{workdir / 'controller.db'}"
    else:
        url = fresh_postgres(request.getfixturevalue("postgres_url"))
    with started_fleet(workdir, command_key, url) as started:
        yield started


def signed_in(fleet: Fleet, role: str) -> tuple[TestClient, str]:
    """A client with a browser session of a user of `role`, and its CSRF token."""
    client = TestClient(fleet.controller.app, base_url="http://localhost")
    answer = client.post(
        "/api/auth/login", json={"name": fleet.users[role], "password": fleet.password}
    )
    assert answer.status_code == 200, answer.text
    return client, answer.json()["csrf_token"]


def assert_escaped(html: str) -> None:
    assert SCRIPT not in html and "<script>alert(1)" not in html
    assert "onmouseover=alert(1)" not in html.replace("onmouseover=alert(1) x=&#34;", "")
    assert ATTRIBUTE not in html
    assert re.search(r"<script(?![^>]*\bsrc=\"/static/)", html) is None, "an inline script"


def test_pages_need_a_login_and_send_browsers_to_it(fleet):
    client = TestClient(fleet.controller.app, base_url="http://localhost")
    for page in ("/", "/devices", "/rollouts", f"/rollouts/{fleet.rollout_id}", "/audit"):
        answer = client.get(page, follow_redirects=False)
        assert answer.status_code == 303, page
        assert answer.headers["location"] == f"/login?next={page}"
    assert client.get("/api/devices").status_code == 401  # the API still answers JSON
    assert client.get("/api/devices").json()["detail"]["reason"] == "not_authenticated"
    login = client.get("/login")
    assert login.status_code == 200 and 'id="login-form"' in login.text
    assert "Content-Security-Policy" in login.headers
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/vendor/htmx.min.js").status_code == 200, "run make setup"
    # the next page after signing in stays on this site
    assert 'data-next="/"' in client.get("/login?next=//evil.example/").text


def test_api_docs_are_served_by_the_controller(fleet):
    client = TestClient(fleet.controller.app, base_url="http://localhost")
    docs = client.get("/docs")
    assert docs.status_code == 200
    assert "/static/vendor/swagger-ui-bundle.js" in docs.text
    assert "cdn" not in docs.text.lower()
    assert client.get("/static/vendor/swagger-ui-bundle.js").status_code == 200
    assert client.get("/static/vendor/swagger-ui.css").status_code == 200
    assert client.get("/redoc").status_code == 404


@pytest.mark.parametrize("role", ["viewer", "operator", "admin"])
def test_every_page_renders_and_escapes_device_strings(fleet, role):
    client, _csrf = signed_in(fleet, role)
    pages = [*PAGES, f"/rollouts/{fleet.rollout_id}", f"/bundles/{fleet.bundle_digest}"]
    for page in pages:
        answer = client.get(page)
        if role != "admin" and page in ("/audit", "/users"):
            assert answer.status_code == 403, page
            assert "text/html" in answer.headers["content-type"]
            continue
        assert answer.status_code == 200, (page, answer.text[:500])
        assert "text/html" in answer.headers["content-type"]
        assert_escaped(answer.text)
    device = client.get(f"/devices/{quote(EVIL_DEVICE, safe='')}").text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in device
    assert "&#34; onmouseover=alert(1) x=&#34;" in device
    assert "label&lt;script&gt;" in device and "reason&lt;script&gt;" in device


def test_a_viewer_sees_no_action_and_the_api_refuses_one(fleet):
    client, csrf = signed_in(fleet, "viewer")
    rollout = client.get(f"/rollouts/{fleet.rollout_id}").text
    device = client.get("/devices/cam-01").text
    for html in (rollout, device, client.get("/bundles").text, client.get("/enrollment").text):
        assert 'hx-post="/api/rollouts' not in html
        assert 'hx-post="/api/devices' not in html
        assert 'hx-post="/api/deployments' not in html
        assert 'id="upload-form"' not in html
    forced = client.post(f"/api/rollouts/{fleet.rollout_id}/pause", headers={"X-CSRF-Token": csrf})
    assert forced.status_code == 403
    assert forced.json()["detail"]["reason"] == "forbidden"
    operator, _ = signed_in(fleet, "operator")
    assert 'id="pause"' in operator.get(f"/rollouts/{fleet.rollout_id}").text
    assert 'id="deploy"' in operator.get("/devices/cam-01").text


def test_a_post_without_the_csrf_token_is_refused(fleet):
    client, csrf = signed_in(fleet, "operator")
    url = f"/api/rollouts/{fleet.rollout_id}/pause"
    missing = client.post(url)
    assert missing.status_code == 403 and missing.json()["detail"]["reason"] == "csrf_missing"
    wrong = client.post(url, headers={"X-CSRF-Token": "x" * len(csrf)})
    assert wrong.status_code == 403 and wrong.json()["detail"]["reason"] == "csrf_mismatch"
    # the page carries the token htmx sends with every request
    page = client.get("/").text
    assert f'hx-headers=\'{{"X-CSRF-Token": "{csrf}"}}\'' in page


def test_the_fleet_page_counts_and_alerts(fleet):
    client, _ = signed_in(fleet, "viewer")
    html = client.get("/").text
    assert "13 devices" in html
    alerts = html.split('id="alerts"', 1)[1].split("</table>", 1)[0]
    for kind in ("hot", "throttled", "under voltage", "outbox dropping", "clock skew"):
        assert f"<td>{kind}</td>" in alerts, kind
    assert "cam-00" in html.split('id="offline"', 1)[1]


def test_devices_are_filtered_sorted_and_paged(fleet):
    client, _ = signed_in(fleet, "viewer")

    def ids(query: str) -> list[str]:
        html = client.get(f"/devices?{query}", headers={"HX-Request": "true"}).text
        assert "<html" not in html  # htmx gets the table alone
        return re.findall(r'<td><a href="/devices/([^"]+)">', html)

    assert ids("profile=rpi5") == [f"cam-{i:02d}" for i in range(1, 12, 2)]
    assert ids("tag=lobby") == ["cam-01"] and ids("tag=floor") == []
    assert ids("tag=floor_2") == ["cam-01"]
    assert ids("q=CAM-1") == ["cam-10", "cam-11"]
    assert ids("status=offline") == ["cam-00", "cam-04", "cam-08"]
    assert ids("per_page=5&page=2") == [f"cam-{i:02d}" for i in range(5, 10)]
    assert ids("sort=last_seen&desc=1&per_page=2") == [quote(EVIL_DEVICE, safe=""), "cam-00"]
    assert ids("page=99&per_page=5")[-1] == quote(EVIL_DEVICE, safe="")  # the last page
    assert "no group" in client.get("/devices?group=nope").text
    assert client.get("/devices?per_page=100000").status_code == 422


def test_bundle_page_shows_signatures_variants_and_files(fleet):
    client, _ = signed_in(fleet, "viewer")
    html = client.get(f"/bundles/{fleet.bundle_digest}").text
    signatures = html.split('id="signatures"', 1)[1].split("</table>", 1)[0]
    assert re.search(
        r'<td class="mono">[0-9a-f]{64}</td><td><span class="pill pill-running">trusted', signatures
    )
    files = html.split('id="files"', 1)[1].split("</table>", 1)[0]
    assert "litert/fp32" in files and "model.tflite" in files and "19.5 KiB" in files
    assert client.get(f"/bundles/{'0' * 64}").status_code == 404


def test_device_page_draws_charts_as_svg(fleet):
    client, _ = signed_in(fleet, "viewer")
    html = client.get(f"/devices/{quote(EVIL_DEVICE, safe='')}").text
    assert html.count("<svg viewBox=") >= 5
    assert re.search(r'<path class="line" d="M[0-9.]+,[0-9.]+ L', html)
    assert client.get("/devices/nope").status_code == 404


def test_the_live_stream_sends_new_detections_and_ends_with_the_client(fleet, caplog):
    caplog.set_level(logging.INFO, logger="controller.dashboard.live")
    session = signed_in(fleet, "viewer")[0].cookies["edgefleet_session"]
    url = f"{fleet.base_url}/devices/cam-02/live?after={time.time()}"
    got: list[str] = []
    http = httpx.Client(headers={"Cookie": f"edgefleet_session={session}"}, timeout=10)
    with http, http.stream("GET", url) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        timer = threading.Timer(0.3, add_detection, (fleet.sessions, "cam-02", "person"))
        timer.start()
        start = time.monotonic()
        for line in stream.iter_lines():
            got.append(line)
            if "person" in line or time.monotonic() - start > 5:
                break
        timer.join()
    assert any(line == "event: detection" for line in got)
    assert any("person" in line for line in got)
    assert time.monotonic() - start < 2.5
    # the stream ends once the client has gone
    deadline = time.monotonic() + 3
    while "live_stream_end device='cam-02' reason=client_gone" not in caplog.text:
        assert time.monotonic() < deadline, caplog.text
        time.sleep(0.05)


def test_unreadable_bundle_signatures_are_a_note_not_an_error(tmp_path):
    garbage = tmp_path / "garbage.bundle"
    garbage.write_bytes(b"not a tar file")
    read = bundle_signatures(garbage, None)
    assert read.signatures == [] and read.note.startswith("the signatures could not be read")
    assert bundle_signatures(tmp_path / "absent.bundle", None).note.startswith("the signatures")
