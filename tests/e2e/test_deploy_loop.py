"""The whole loop with real parts: mosquitto, controller, an agent process, the real model."""

from __future__ import annotations

import signal
import sys
import tarfile
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from controller.demo.processes import spawn_agent, stop_agent, write_agent_config
from controller.demo.sample_video import Placement, astronaut_frame, write_sample_video
from controller.demo.waiting import wait_until
from controller.server import Controller
from controller.settings import ControllerSettings, HttpSettings, MqttSettings
from ota.keys import SigningKey
from ota.trust import TrustStore
from ota.trust_file import save_trust_store
from tests.controller.operators import api_client

pytestmark = pytest.mark.e2e

DEVICE = "e2e-cam-01"


def iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@pytest.fixture
def fleet(tmp_path, mosquitto, release_key, command_key, command_key_file):
    """Controller + agent process on the test's own mosquitto.

    The controller trusts the fleet's release key and a second key; the device trusts only the
    release key, so a bundle signed by the second key reaches the device and must be refused
    there.
    """
    other_key = SigningKey.generate()
    controller_trust = tmp_path / "controller-trust.json"
    save_trust_store(
        TrustStore.from_keys([release_key.public_key(), other_key.public_key()]), controller_trust
    )
    settings = ControllerSettings(
        data_dir=tmp_path / "controller",
        mqtt=MqttSettings(port=mosquitto.port, client_id="e2e-controller"),
        http=HttpSettings(port=0),
        trust_path=controller_trust,
        command_key_path=command_key_file,
    )
    controller = Controller(settings).start()

    agent_dir = tmp_path / "agent"
    agent_dir.mkdir()
    device_trust = TrustStore.from_keys(
        [release_key.public_key()], command_keys=[command_key.public_key()]
    )
    save_trust_store(device_trust, agent_dir / "trust.json")
    video = write_sample_video(
        tmp_path / "astronaut.avi",
        fps=10,
        seconds_per_image=1.0,
        # face then no face: the tracker turns each pass into one start and one end event
        scenes=[("astronaut", Placement("astronaut")), ("coffee", Placement("coffee"))],
    )
    config = {
        "device_id": DEVICE,
        "data_dir": str(agent_dir),
        "mqtt": {"host": "127.0.0.1", "port": mosquitto.port, "keepalive": 5},
        "cameras": [{"id": "cam0", "source": str(video.path), "loop": True}],
        "health_interval_s": 1.0,
        "chunk_request_timeout_s": 2.0,
    }
    agent = spawn_agent(write_agent_config(agent_dir, config), tmp_path / "agent.log")
    http = api_client(controller.api_url, controller.sessions)
    try:
        yield type(
            "Fleet",
            (),
            {
                "controller": controller,
                "agent": agent,
                "http": http,
                "other_key": other_key,
                "agent_log": tmp_path / "agent.log",
                "broker": mosquitto,
            },
        )
    finally:
        http.close()
        stop_agent(agent)
        controller.stop()
        if agent.returncode not in (0, -signal.SIGTERM):
            sys.stderr.write((tmp_path / "agent.log").read_text()[-4000:])


def device(http):
    return next((d for d in http.get("/api/devices").json() if d["id"] == DEVICE), None)


def deploy(http, bundle_path: Path) -> str:
    response = http.post("/api/bundles", content=bundle_path.read_bytes())
    assert response.status_code == 201, response.text
    digest = response.json()["digest"]
    response = http.post("/api/deployments", json={"device": DEVICE, "bundle": digest})
    assert response.status_code == 202, response.text
    return digest


def events(http, kind=None):
    found = http.get("/api/events", params={"device": DEVICE, "limit": 200}).json()
    return [e for e in found if kind is None or e["kind"] == kind]


def test_deploy_detect_and_refuse_tampered_bundles(fleet, build_blazeface):
    http = fleet.http
    wait_until("agent online", lambda: (device(http) or {}).get("online"), 60)

    v1 = build_blazeface(version=1)
    digest = deploy(http, v1.path)
    wait_until("bundle running", lambda: (device(http) or {}).get("active_digest") == digest, 60)
    assert device(http)["active_runtime"] == "litert"

    detections = wait_until(
        "4 detection events",
        lambda: (
            (d := http.get("/api/detections", params={"limit": 50}).json()) and len(d) >= 4 and d
        ),
        60,
    )
    _, truth = astronaut_frame((640, 480))
    for det in detections:
        assert det["label"] == "face"
        box = (det["x1"], det["y1"], det["x2"], det["y2"])
        assert iou(box, truth) >= 0.5, (box, truth)

    # 1. the bundle file is changed on the controller's disk after upload: the digest offered
    #    no longer matches what arrives, or the manifest's hashes catch it
    v2 = build_blazeface(version=2)
    with tarfile.open(v2.path) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".tflite"))
    response = http.post("/api/bundles", content=v2.path.read_bytes())
    assert response.status_code == 201, response.text
    stored = Path(fleet.controller.settings.bundle_dir) / f"{v2.digest}.bundle"
    data = bytearray(stored.read_bytes())
    data[member.offset_data + 1000] ^= 0xFF
    stored.write_bytes(bytes(data))
    http.post("/api/deployments", json={"device": DEVICE, "bundle": v2.digest})
    failed = wait_until("refusal of the altered bundle", lambda: events(http, "failed"), 60)
    assert failed[0]["bundle"] == v2.digest
    assert failed[0]["reason"] == "hash_mismatch"

    # 2. a bundle signed by a key the device does not trust
    v3 = build_blazeface(version=3, key=fleet.other_key)
    digest3 = deploy(http, v3.path)
    refused = wait_until(
        "refusal of the untrusted bundle",
        lambda: [e for e in events(http, "failed") if e["bundle"] == digest3],
        60,
    )
    assert refused[0]["reason"] in ("unknown_key", "threshold_not_met")

    # the agent kept the model it had and keeps detecting with it
    assert device(http)["active_digest"] == digest
    before = http.get("/api/summary").json()["detections"]
    wait_until(
        "detections after the refusals",
        lambda: http.get("/api/summary").json()["detections"] > before + 2,
        30,
    )
    assert fleet.agent.poll() is None


def test_garbage_on_agent_topics_is_counted_and_does_not_stop_the_controller(fleet):
    http = fleet.http
    wait_until("agent online", lambda: (device(http) or {}).get("online"), 60)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="e2e-garbage")
    client.connect("127.0.0.1", fleet.broker.port)
    client.loop_start()
    prefix = "edgefleet/v1/dev"
    garbage = [
        (f"{prefix}/{DEVICE}/det", b"not json"),
        (
            f"{prefix}/{DEVICE}/det",
            b'{"v":"1.0","type":"det","device":"e2e-cam-01","detections":[{"score":NaN}]}',
        ),
        (f"{prefix}/{DEVICE}/health", b'{"v":"9.0","type":"health","device":"e2e-cam-01"}'),
        (
            f"{prefix}/{DEVICE}/evt",
            b'{"v":"1.0","type":"evt","device":"other-device","kind":"log"}',
        ),
        (f"{prefix}/{DEVICE}/state", b"\xff\xfe\x00"),
        (f"{prefix}/{DEVICE}/ack", b"[]"),
        (f"{prefix}/Bad_ID/det", b"{}"),
        (f"{prefix}/{DEVICE}/det", b"{" * 300_000),
    ]
    for topic, payload in garbage:
        client.publish(topic, payload, qos=1).wait_for_publish(5)
    client.loop_stop()
    client.disconnect()

    def rejected_total():
        text = http.get("/metrics").text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("edgefleet_ingest_rejected_total")
        )

    wait_until("garbage counted", lambda: rejected_total() >= len(garbage) - 1, 30)

    # the ingest keeps storing real messages: the agent's health keeps arriving
    def newest_health() -> float:
        rows = http.get(f"/api/health/{DEVICE}", params={"limit": 1}).json()
        return float(rows[0]["ts"]) if rows else 0.0

    before = newest_health()
    wait_until("health after garbage", lambda: newest_health() > before, 30)
    assert fleet.agent.poll() is None


def test_a_killed_agent_is_reported_offline_by_its_last_will(fleet):
    http = fleet.http
    wait_until("agent online", lambda: (device(http) or {}).get("online"), 60)
    fleet.agent.kill()
    fleet.agent.wait(timeout=10)
    # the broker publishes the retained offline state after 1.5 keep-alive periods
    wait_until("offline by Last Will", lambda: device(http)["online"] is False, 30)
