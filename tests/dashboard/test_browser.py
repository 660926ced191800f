"""The dashboard in a real browser: Debian's chromium driven by Playwright against a started
controller. Every page visited is saved as a screenshot in build/screenshots/."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from playwright.sync_api import Browser, Dialog, Page, expect, sync_playwright

from controller.dashboard import missing_assets
from controller.db import Bundle, Device
from controller.rollouts.models import RolloutRow
from tests.dashboard.conftest import ATTRIBUTE, EVIL_DEVICE, SCRIPT, Fleet, add_detection

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = Path(__file__).resolve().parents[2] / "build" / "screenshots"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: run `make setup` (scripts/system-packages.sh installs chromium)"
        )
    if missing_assets():
        pytest.fail(
            f"the dashboard's libraries are missing ({', '.join(missing_assets())}): run "
            "`make setup` (scripts/fetch-assets.sh)"
        )
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def dialogs() -> list[str]:
    """The messages of every dialog (alert, confirm) the page opened."""
    return []


@pytest.fixture
def page(browser: Browser, fleet: Fleet, dialogs: list[str]) -> Iterator[Page]:
    """A fresh browser context (no cookies) whose dialogs are recorded and dismissed."""
    context = browser.new_context(base_url=fleet.base_url, viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    tab.set_default_timeout(5000)

    def on_dialog(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    tab.on("dialog", on_dialog)
    try:
        yield tab
    finally:
        context.close()


def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def sign_in(page: Page, fleet: Fleet, role: str, start: str = "/") -> None:
    page.goto(start)
    expect(page.locator("#login-form")).to_be_visible()
    page.fill("input[name=name]", fleet.users[role])
    page.fill("input[name=password]", fleet.password)
    page.click("button[type=submit]")
    expect(page.locator("#whoami")).to_have_text(fleet.users[role])


def test_login_and_logout(page: Page, fleet: Fleet):
    page.goto("/devices")
    expect(page).to_have_url(re.compile(r"/login\?next=/devices$"))
    shot(page, "login")
    page.fill("input[name=name]", fleet.users["operator"])
    page.fill("input[name=password]", "wrong password")
    page.click("button[type=submit]")
    expect(page.locator("#login-error")).to_contain_text("bad_login")
    page.fill("input[name=password]", fleet.password)
    page.click("button[type=submit]")
    expect(page).to_have_url(re.compile(r"/devices$"))
    expect(page.locator("#whoami")).to_have_text(fleet.users["operator"])
    page.click("#logout")
    expect(page).to_have_url(re.compile(r"/login$"))
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/login\?next=/$"))


def test_a_viewer_sees_no_action_and_a_forced_post_is_refused(page: Page, fleet: Fleet):
    sign_in(page, fleet, "viewer")
    page.goto(f"/rollouts/{fleet.rollout_id}")
    expect(page.locator("#rollout-state")).to_be_visible()
    assert page.locator("#rollout-actions button").count() == 0
    page.goto("/devices/cam-01")
    expect(page.locator("#device-status")).to_be_visible()
    assert page.locator("#actions").count() == 0
    assert page.locator("[hx-post]:not(#logout)").count() == 0
    forced = page.evaluate(
        """async (url) => {
            const csrf = document.querySelector('meta[name="csrf-token"]').content;
            const r = await fetch(url, {method: "POST", headers: {"X-CSRF-Token": csrf}});
            return [r.status, (await r.json()).detail.reason];
        }""",
        f"/api/rollouts/{fleet.rollout_id}/pause",
    )
    assert forced == [403, "forbidden"]
    page.goto("/users")
    expect(page.locator("h1")).to_have_text("403")


def test_a_live_detection_appears_without_a_reload(page: Page, fleet: Fleet):
    sign_in(page, fleet, "viewer", "/devices/cam-03")
    expect(page.locator("#device-id")).to_have_text("cam-03")
    page.wait_for_timeout(300)  # the page's event stream is connected
    label = f"bicycle-{uuid.uuid4().hex[:6]}"
    started = time.monotonic()
    add_detection(fleet.sessions, "cam-03", label)
    expect(page.locator("#detections-body")).to_contain_text(label, timeout=2000)
    assert time.monotonic() - started < 2.0
    # a change of the device's state shows as well
    expect(page.locator("#device-status")).to_contain_text("online")
    with fleet.sessions() as db:
        device = db.get(Device, "cam-03")
        assert device is not None
        device.online, device.status = False, "offline"
        db.commit()
    expect(page.locator("#device-status")).to_contain_text("offline", timeout=2000)
    shot(page, "device-live")


def test_a_rollout_is_paused_from_its_page(page: Page, fleet: Fleet):
    sign_in(page, fleet, "operator", f"/rollouts/{fleet.rollout_id}")
    expect(page.locator("#rollout-state")).to_have_text("scheduled")
    page.click("#pause")
    expect(page.locator("#rollout-state")).to_have_text("paused", timeout=3000)
    expect(page.locator("#resume")).to_be_visible()
    with fleet.sessions() as db:
        row = db.get(RolloutRow, fleet.rollout_id)
        assert row is not None and row.state == "paused"
    shot(page, "rollout-paused")


def test_a_bundle_is_uploaded_and_a_rollout_created_from_the_pages(page: Page, fleet: Fleet):
    sign_in(page, fleet, "operator", "/bundles")
    page.set_input_files("#upload-form input[type=file]", str(fleet.upload))
    page.click("#upload-form button[type=submit]")
    expect(page.locator("#bundles")).to_contain_text("face@3")
    with fleet.sessions() as db:
        assert db.query(Bundle).filter_by(name="face", version=3).count() == 1
    page.goto("/rollouts")
    page.fill("#new-rollout input[name=name]", "lobby <i>wave</i>")
    page.select_option("#new-rollout select[name=bundle]", "face@3")
    page.fill("#new-rollout input[name='selector.devices']", "cam-01, cam-03")
    page.fill("#new-rollout input[name='spec.waves']", "1, 100%")
    page.check("#new-rollout input[name='spec.approval']")
    page.click("#create-rollout")
    expect(page.locator("#rollout-name")).to_have_text("lobby <i>wave</i>")
    expect(page.locator("#members")).to_contain_text("cam-03")
    rollout_id = page.url.rsplit("/", 1)[1]
    with fleet.sessions() as db:
        row = db.get(RolloutRow, rollout_id)
        assert row is not None and row.spec["approval"] is True
        assert [w["value"] for w in row.spec["waves"]] == [1.0, 100.0]
    # a refused request says why, and creates nothing
    page.goto("/rollouts")
    page.fill("#new-rollout input[name=name]", "nobody")
    page.fill("#new-rollout input[name='selector.devices']", "no-such-device")
    page.click("#create-rollout")
    expect(page.locator("#flash")).to_contain_text("422")
    shot(page, "rollout-refused")


def test_device_actions_from_its_page(page: Page, fleet: Fleet):
    sign_in(page, fleet, "operator", "/devices/cam-01")
    page.select_option("#actions select[name=bundle]", fleet.bundle_digest)
    page.click("#deploy")
    expect(page.locator("#flash")).to_contain_text("deployment sent")
    expect(page.locator("#deployments")).to_contain_text(fleet.bundle_digest[:12])
    page.click("#restart-pipeline")
    expect(page.locator("#flash")).to_contain_text("restart sent")
    # bad input gets the API's reason, and nothing is sent
    page.fill("#actions input[name=config]", "{not json")
    page.click("#set-config")
    expect(page.locator("#flash")).to_contain_text("422 Unprocessable Entity: body.config:")
    shot(page, "device-actions")


def test_hostile_device_strings_render_as_text(page: Page, fleet: Fleet, dialogs: list[str]):
    sign_in(page, fleet, "admin")
    evil = f"/devices/{quote(EVIL_DEVICE, safe='')}"
    for url in ("/", "/devices", evil):
        page.goto(url)
        expect(page.locator("h1")).to_be_visible()
        hostile = page.locator("td, dd, span.tag", has_text="alert(1)")
        assert hostile.count() > 0
        for element in hostile.all()[:20]:
            element.hover(timeout=2000)
        assert page.evaluate("document.querySelectorAll('[onmouseover]').length") == 0
        assert page.evaluate("document.querySelectorAll('script:not([src])').length") == 0
    expect(page.locator("#device-id")).to_have_text(EVIL_DEVICE)
    expect(page.locator("#detections-body")).to_contain_text(f"label{SCRIPT}")
    expect(page.locator("#detections-body")).to_contain_text(f"cam{ATTRIBUTE}")
    expect(page.locator("#cameras")).to_contain_text(f"cam{SCRIPT}")
    expect(page.locator("#events")).to_contain_text(f"reason{SCRIPT}")
    expect(page.locator("#events")).to_contain_text(f"message{ATTRIBUTE}{SCRIPT}")
    expect(page.locator("#runtimes")).to_contain_text(ATTRIBUTE)
    # a new hostile detection arriving live is text as well
    add_detection(fleet.sessions, EVIL_DEVICE, f"live{SCRIPT}")
    expect(page.locator("#detections-body")).to_contain_text(f"live{SCRIPT}", timeout=2000)
    page.wait_for_timeout(200)
    assert dialogs == []
    page.evaluate("window.alert('probe')")  # the recorder itself works
    assert dialogs == ["probe"]
    shot(page, "device-hostile-strings")


def test_a_post_without_the_csrf_token_is_refused(page: Page, fleet: Fleet):
    sign_in(page, fleet, "operator")
    statuses = page.evaluate(
        """async () => {
            const csrf = document.querySelector('meta[name="csrf-token"]').content;
            const body = JSON.stringify({add: ["from-browser"]});
            const headers = {"Content-Type": "application/json"};
            const bare = await fetch("/api/devices/cam-05/tags", {method: "POST", headers, body});
            const signed = await fetch("/api/devices/cam-05/tags", {
                method: "POST", headers: {...headers, "X-CSRF-Token": csrf}, body});
            return [bare.status, (await bare.json()).detail.reason, signed.status];
        }"""
    )
    assert statuses == [403, "csrf_missing", 200]


def test_every_page_in_a_screenshot(page: Page, fleet: Fleet):
    sign_in(page, fleet, "admin")
    pages = {
        "fleet": "/",
        "devices": "/devices",
        "devices-filtered": "/devices?profile=rpi5&sort=last_seen&desc=1",
        "device": "/devices/cam-01",
        "bundles": "/bundles",
        "bundle": f"/bundles/{fleet.bundle_digest}",
        "rollouts": "/rollouts",
        "rollout": f"/rollouts/{fleet.rollout_id}",
        "audit": "/audit",
        "users": "/users",
        "enrollment": "/enrollment",
        "api-docs": "/docs",
    }
    for name, url in pages.items():
        page.goto(url)
        if name == "api-docs":
            expect(page.locator(".swagger-ui .info")).to_be_visible()
        else:
            expect(page.locator("h1")).to_be_visible()
        shot(page, name)
    assert {p.stem for p in SHOTS.glob("*.png")} >= set(pages)
