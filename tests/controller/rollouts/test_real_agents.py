"""Real agent processes on the real broker. A bundle that fails on the device halts the rollout
after its canary, and the other devices never get it. BlazeFace rolled out, then CenterFace,
much slower on the CPU, breaks the rollout's fps gate; the rollout halts with `gate:fps` and
the canary is reverted to BlazeFace."""

from __future__ import annotations

import signal
import sys
import uuid
from datetime import datetime, timezone

import pytest

from controller.demo.processes import spawn_agent, stop_agent, write_agent_config
from controller.demo.sample_video import Placement, write_sample_video
from controller.demo.waiting import wait_until
from controller.release.recipes import example_spec
from controller.server import Controller
from controller.settings import (
    ControllerSettings,
    HttpSettings,
    IngestSettings,
    MqttSettings,
    RolloutSettings,
)
from ota.build import build_bundle
from ota.trust import TrustStore
from ota.trust_file import save_trust_store
from tests.controller.operators import api_client

pytestmark = pytest.mark.e2e
DEVICE = "gate-cam-01"


@pytest.fixture
def centerface_bundle(tmp_path, centerface_model, release_key):
    spec = example_spec("centerface", version=1)
    out = tmp_path / f"centerface-{uuid.uuid4().hex[:6]}.bundle"
    return build_bundle(spec, tmp_path, [release_key], out, datetime.now(timezone.utc))


@pytest.fixture
def start_fleet(tmp_path, mosquitto, release_key, command_key, trust_file, command_key_file):
    """Starts a controller and `count` agent processes; yields (controller, http client)."""
    started: list = []
    trust = TrustStore.from_keys(
        [release_key.public_key()], command_keys=[command_key.public_key()]
    )
    video = write_sample_video(
        tmp_path / "faces.avi",
        fps=10,
        seconds_per_image=1.0,
        scenes=[("a", Placement("astronaut"))],
    )

    def start(count: int):
        settings = ControllerSettings(
            data_dir=tmp_path / "controller",
            mqtt=MqttSettings(port=mosquitto.port, client_id=f"gate-{uuid.uuid4().hex[:6]}"),
            http=HttpSettings(port=0),
            # every health sample kept: the gate compares short windows
            ingest=IngestSettings(max_delay_s=0.05, health_history_s=0.0),
            trust_path=trust_file,
            command_key_path=command_key_file,
            rollouts=RolloutSettings(tick_s=0.5, leader_retry_s=0.5, revert_retry_s=5.0),
        )
        controller = Controller(settings).start()
        started.append(controller)
        for i in range(count):
            agent_dir = tmp_path / f"agent-{i}"
            agent_dir.mkdir()
            save_trust_store(trust, agent_dir / "trust.json")
            config = {
                "device_id": f"{DEVICE}-{i}" if i else DEVICE,
                "data_dir": str(agent_dir),
                "mqtt": {"host": "127.0.0.1", "port": mosquitto.port, "keepalive": 5},
                # as fast as the model goes: the processed fps is the model's speed
                "cameras": [
                    {"id": "cam0", "source": str(video.path), "loop": True, "realtime": False}
                ],
                "health_interval_s": 1.0,
                "probation_s": 3.0,
            }
            log = tmp_path / f"agent-{i}.log"
            started.append((spawn_agent(write_agent_config(agent_dir, config), log), log))
        http = api_client(controller.api_url, controller.sessions)
        started.append(http)
        return controller, http

    yield start
    for part in reversed(started):
        if isinstance(part, tuple):
            agent, log = part
            stop_agent(agent)
            if agent.returncode not in (0, -signal.SIGTERM):
                sys.stderr.write(log.read_text()[-4000:])
        elif isinstance(part, Controller):
            part.stop()
        else:
            part.close()


def state(http, rid: str) -> str:
    return http.get(f"/api/rollouts/{rid}").json()["state"]


def device(http) -> dict:
    return next((d for d in http.get("/api/devices").json() if d["id"] == DEVICE), {})


def test_a_bundle_failing_on_the_canary_never_reaches_the_other_devices(start_fleet, make_bundle):
    _controller, http = start_fleet(3)
    wait_until(
        "agents online", lambda: sum(d["online"] for d in http.get("/api/devices").json()) == 3, 60
    )
    # a model file no runtime can load: the canary's install fails and it stays as it was
    broken = make_bundle(name="broken", version=1, model_bytes=5000)
    assert http.post("/api/bundles", content=broken.path.read_bytes()).status_code == 201
    body = {"name": "broken", "bundle": "broken@1", "spec": {"waves": ["1", "100%"]}}
    created = http.post("/api/rollouts", json=body)
    assert created.status_code == 201, created.text
    rid = created.json()["id"]
    wait_until("halted", lambda: state(http, rid) == "halted", 120)
    assert http.get(f"/api/rollouts/{rid}").json()["reason"] == "threshold:failures"
    members = http.get(f"/api/rollouts/{rid}/devices").json()
    assert sorted(m["state"] for m in members) == ["failed", "queued", "queued"]
    deployments = http.get("/api/deployments").json()
    assert len([d for d in deployments if d["bundle"] == broken.digest]) == 1


def test_a_much_slower_model_breaks_the_fps_gate_and_the_canary_is_reverted(
    start_fleet, build_blazeface, centerface_bundle
):
    _controller, http = start_fleet(1)
    wait_until("agent online", lambda: device(http).get("online"), 60)
    blaze = build_blazeface(version=1)
    for built in (blaze, centerface_bundle):
        response = http.post("/api/bundles", content=built.path.read_bytes())
        assert response.status_code == 201, response.text

    first = http.post(
        "/api/rollouts",
        json={"name": "blazeface", "bundle": "blazeface-short@1", "spec": {"waves": ["100%"]}},
    )
    assert first.status_code == 201, first.text
    wait_until("blazeface rolled out", lambda: state(http, first.json()["id"]) == "completed", 90)
    assert device(http)["active_digest"] == blaze.digest
    window = 8.0
    wait_until(
        "blazeface history",
        lambda: len(http.get(f"/api/health/{DEVICE}", params={"limit": 20}).json()) >= 12,
        60,
    )

    body = {
        "name": "centerface",
        "bundle": "centerface@1",
        "spec": {
            "waves": ["1", "100%"],
            "on_failure": "revert",
            "gates": [{"name": "fps", "min": 0.5, "window_s": window}],
        },
    }
    second = http.post("/api/rollouts", json=body)
    assert second.status_code == 201, second.text
    rid = second.json()["id"]
    wait_until("reverted", lambda: state(http, rid) == "reverted", 180)
    timeline = http.get(f"/api/rollouts/{rid}/timeline").json()
    halt = next(e for e in timeline if e["reason"] == "gate:fps")
    assert halt["state"] == "halted"
    assert halt["data"]["new"] < 0.5 * halt["data"]["old"], halt
    wait_until("back on blazeface", lambda: device(http).get("active_digest") == blaze.digest, 60)
