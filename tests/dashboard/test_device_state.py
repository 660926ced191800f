"""The device page's state fragment rendered from its template alone: the runtime workers of
the newest health, and nothing about them when the health lists none."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

from controller.dashboard.pages import make_environment

SCRIPT = "<script>alert(1)</script>"


def render(health_payload: dict[str, Any] | None) -> str:
    dev = SimpleNamespace(
        id="cam-01",
        status="online",
        last_seen=time.time(),
        profile="jetson-nano",
        agent_version="1.0",
        cameras=["front"],
        runtimes=[{"key": "tensorrt", "available": True, "reason": ""}],
        active_name=None,
        active_version=None,
        active_digest=None,
        active_runtime="tensorrt",
        active_reason="",
    )
    health = None
    if health_payload is not None:
        health = SimpleNamespace(payload=health_payload, ts=time.time(), received=time.time())
    d = SimpleNamespace(
        decommissioned=False,
        tags=[],
        alerts=[],
        probation=False,
        previous_bundle=None,
        target=None,
        health=health,
        events=[],
        deployments=[],
    )
    return make_environment().get_template("device_state.html").render(d=d, dev=dev, me=None)


def test_the_workers_of_the_newest_health_are_shown_escaped() -> None:
    html = render(
        {
            "runtime_workers": [
                {
                    "runtime": "tensorrt",
                    "state": "restarting",
                    "pid": None,
                    "crashes": 3,
                    "restarts": 2,
                    "last_crash": SCRIPT,
                },
                "not a worker",
            ]
        }
    )
    assert 'id="runtime-workers"' in html
    row = html.split('id="runtime-workers"')[1].split("</table>")[0]
    assert "<td>tensorrt</td><td>restarting</td>" in row
    assert "<td>3</td><td>2</td>" in row
    assert SCRIPT not in html and "&lt;script&gt;" in row
    assert "not a worker" not in row


def test_no_workers_section_without_workers_in_health() -> None:
    assert 'id="runtime-workers"' not in render(None)
    assert 'id="runtime-workers"' not in render({"cpu_percent": 10.0})
    assert 'id="runtime-workers"' not in render({"runtime_workers": []})
