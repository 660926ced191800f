"""The REST API: over HTTP against a started controller, and through TestClient from parts."""

from __future__ import annotations

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from controller.api.app import ApiContext, create_app
from controller.bundles.chunks import ChunkServer
from controller.bundles.repository import BundleRepository, release_verifier
from controller.db import make_engine, session_factory, upgrade_database
from controller.demo.waiting import wait_until
from controller.fleet.deployments import DeploymentService
from controller.mqtt.commands import CommandSender
from controller.mqtt.ingest import IngestStats
from controller.mqtt.session import Publisher
from controller.settings import MqttSettings
from ota.keys import SigningKey
from protocol.events import EventKind
from protocol.messages import Box, CameraHealth, Detection, DetectionBatch, Event, Health
from protocol.topics import Topics
from tests.controller.fake_agents import FakeAgent
from tests.controller.operators import auth_headers


@pytest.fixture
def http(api_client):
    return api_client


@pytest.fixture
def agent(mosquitto):
    one = FakeAgent(mosquitto.host, mosquitto.port, "cam-a")
    yield one
    one.close()


def rows(http: httpx.Client, path: str) -> list:
    response = http.get(path)
    assert response.status_code == 200, response.text
    return response.json()


def detections(labels: list[str], ts: float = 1000.0) -> DetectionBatch:
    box = Box(x1=0.0, y1=0.0, x2=0.5, y2=0.5)
    dets = tuple(
        Detection(camera="cam0", label=label, score=0.8, box=box, ts=ts + i)
        for i, label in enumerate(labels)
    )
    return DetectionBatch(device="cam-a", model="m", runtime="onnx", detections=dets)


def test_api_serves_what_agents_published(http, agent):
    agent.online(profile="x86-64", agent_version="0.1.0")
    camera = CameraHealth(camera="cam0", fps_processed=7.5, frames_processed=300)
    agent.send(Health(device="cam-a", cameras=(camera,)), "health")
    agent.send(detections(["face", "person", "face"]), "det")
    agent.send(Event(device="cam-a", kind=EventKind.LOG, message="hello"), "evt")
    wait_until("event via the API", lambda: len(rows(http, "/api/events")) == 1)
    wait_until("detections", lambda: len(rows(http, "/api/detections")) == 3)

    devices = http.get("/api/devices").json()
    assert [(d["id"], d["online"], d["profile"]) for d in devices] == [("cam-a", True, "x86-64")]
    assert http.get("/api/devices/cam-a").json()["agent_version"] == "0.1.0"
    assert http.get("/api/devices/cam-zz").status_code == 404

    newest = http.get("/api/detections", params={"limit": 2}).json()
    assert [d["ts"] for d in newest] == [1002.0, 1001.0]
    faces = http.get("/api/detections", params={"label": "face", "device": "cam-a"}).json()
    assert [d["label"] for d in faces] == ["face", "face"]
    assert http.get("/api/detections", params={"device": "cam-b"}).json() == []
    assert http.get("/api/detections", params={"limit": 0}).status_code == 422

    health = http.get("/api/health/cam-a", params={"limit": 1}).json()
    assert health[0]["payload"]["cameras"][0]["fps_processed"] == 7.5
    events = http.get("/api/events", params={"device": "cam-a"}).json()
    assert [(e["kind"], e["message"]) for e in events] == [("log", "hello")]

    summary = http.get("/api/summary").json()
    assert (summary["devices"], summary["devices_online"], summary["detections"]) == (1, 1, 3)
    assert (summary["frames"], summary["fps"]) == (300, 7.5)

    metrics = http.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics.text)
        for s in family.samples
    }
    assert samples[("edgefleet_devices_online", ())] == 1
    assert samples[("edgefleet_ingest_stored_total", (("kind", "det"),))] == 1
    assert "# TYPE edgefleet_ingest_received_total counter" in metrics.text
    assert http.get("/healthz").json() == {"status": "ok", "database": True, "mqtt": True}


def test_summary_counts_only_the_newest_health_of_each_device(http, mosquitto):
    fleet = [FakeAgent(mosquitto.host, mosquitto.port, name) for name in ("cam-a", "cam-b")]
    try:
        for index, one in enumerate(fleet):
            one.online()
            for ts, frames in ((1000.0, 100), (2000.0, 300 + index)):  # oldest first
                camera = CameraHealth(camera="cam0", fps_processed=5.0, frames_processed=frames)
                one.send(Health(device=one.device, ts=ts, cameras=(camera,)), "health")
        wait_until(
            "both samples of both devices",
            lambda: all(len(rows(http, f"/api/health/{a.device}")) == 2 for a in fleet),
        )
        summary = http.get("/api/summary").json()
        assert (summary["devices"], summary["frames"], summary["fps"]) == (2, 601, 10.0)
        one = http.get("/api/summary", params={"device": "cam-b"}).json()
        assert (one["devices"], one["frames"], one["fps"], one["detections"]) == (2, 301, 5.0, 0)
    finally:
        for one in fleet:
            one.close()


def test_bundles_are_uploaded_served_and_deployed(http, agent, controller, make_bundle):
    built = make_bundle()
    body = built.path.read_bytes()
    created = http.post("/api/bundles", content=body)
    assert created.status_code == 201, created.text
    info = created.json()
    assert (info["digest"], info["name"], info["size"]) == (built.digest, "face", built.size)
    assert info["variants"] == ["litert/fp32"]
    assert http.post("/api/bundles", content=body).status_code == 201  # same bundle again
    assert [b["digest"] for b in http.get("/api/bundles").json()] == [built.digest]
    assert http.get(f"/api/bundles/{built.digest}").json()["chunks"] == info["chunks"]
    assert http.get(f"/api/bundles/{'0' * 64}").status_code == 404

    part = http.get(f"/api/bundles/{built.digest}/file", headers={"Range": "bytes=10-109"})
    assert part.status_code == 206 and part.content == body[10:110]

    agent.online()
    wait_until("device", lambda: http.get("/api/devices/cam-a").status_code == 200)
    made = http.post("/api/deployments", json={"device": "cam-a", "bundle": built.digest})
    assert made.status_code == 202, made.text
    assert made.json()["status"] == "sent"
    listed = http.get("/api/deployments").json()
    assert [(d["id"], d["device"]) for d in listed] == [(made.json()["id"], "cam-a")]
    missing = http.post("/api/deployments", json={"device": "cam-zz", "bundle": built.digest})
    assert missing.status_code == 404
    bad = http.post("/api/deployments", json={"device": "cam-a", "bundle": "nope"})
    assert bad.status_code == 422


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_refused_bundles_get_the_reason_and_leave_nothing_behind(http, controller, make_bundle):
    stranger = make_bundle(key=SigningKey.generate())
    refused = http.post("/api/bundles", content=stranger.path.read_bytes())
    assert refused.status_code == 422
    assert refused.json()["detail"]["reason"] == "unknown_key"
    garbage = http.post("/api/bundles", content=b"this is not a tar file" * 100)
    assert garbage.status_code == 422
    assert garbage.json()["detail"]["reason"] == "malformed_bundle"
    assert http.post("/api/bundles", content=b"").status_code == 400
    assert http.get("/api/bundles").json() == []
    assert list(controller.bundles.root.glob("*.bundle")) == []
    assert list(controller.bundles.incoming.iterdir()) == []


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_app_from_parts_without_trust_store_or_broker(tmp_path, db_url, make_bundle):
    upgrade_database(db_url)
    engine = make_engine(db_url)
    sessions = session_factory(engine)
    verify = release_verifier(tmp_path / "absent.json", 1 << 20)
    store = BundleRepository(tmp_path / "bundles", sessions, verify, 4096)
    publisher = Publisher(MqttSettings(port=1), 2, "unused")  # never started
    topics = Topics()
    commands = CommandSender(publisher, topics)
    chunks = ChunkServer(publisher, store, topics, 0)
    deployer = DeploymentService(sessions, store, commands, chunks)
    ctx = ApiContext(
        sessions,
        store,
        deployer,
        commands,
        IngestStats(),
        publisher,
        chunks,
        100_000,
        mqtt_ready=lambda: False,
    )
    app = create_app(ctx)
    with TestClient(app, base_url="http://localhost", headers=auth_headers(sessions)) as client:
        upload = client.post("/api/bundles", content=make_bundle().path.read_bytes())
        assert upload.status_code == 503
        assert "no usable trust store" in upload.json()["detail"]
        assert client.post("/api/bundles", content=b"x" * 100_001).status_code == 413
        health = client.get("/healthz")
        assert health.status_code == 503 and health.json()["status"] == "degraded"
        assert client.get("/api/devices").json() == []
    engine.dispose()
