"""The controller's own state: Prometheus metrics read from a real database, HTTP request
metrics, and the probes (`/livez`, `/readyz`, `/healthz`), with the database up and down."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, insert
from sqlalchemy.orm import Session, sessionmaker

from controller.api.app import ApiContext, create_app
from controller.auth.transfer import TransferTokens
from controller.bundles.chunks import ChunkServer
from controller.bundles.repository import BundleRepository, release_verifier
from controller.db import (
    Bundle,
    Deployment,
    Device,
    DeviceHealth,
    make_engine,
    session_factory,
    upgrade_database,
)
from controller.demo.broker import free_port
from controller.fleet.deployments import DeploymentService
from controller.mqtt.commands import CommandSender
from controller.mqtt.ingest import IngestStats
from controller.mqtt.session import Publisher
from controller.rollouts.models import RolloutRow
from controller.settings import MqttSettings
from protocol.topics import Topics
from tests.controller.operators import auth_headers

LOOPBACK = ("127.0.0.1", 40000)
DIGEST = "a" * 64


def make_app(
    sessions: sessionmaker[Session], tmp_path: Path, *, mqtt_ready: bool = True, **extra
) -> FastAPI:
    verify = release_verifier(tmp_path / "absent.json", 1 << 20)
    store = BundleRepository(tmp_path / "bundles", sessions, verify, 4096)
    publisher = Publisher(MqttSettings(port=1), 2, "unused")  # never started
    topics = Topics()
    commands = CommandSender(publisher, topics)
    chunks = ChunkServer(publisher, store, topics, 0)
    deployer = DeploymentService(sessions, store, commands, chunks)
    stats = IngestStats()
    ctx = ApiContext(
        sessions,
        store,
        deployer,
        commands,
        stats,
        publisher,
        chunks,
        100_000,
        mqtt_ready=lambda: mqtt_ready,
        **extra,
    )
    return create_app(ctx)


@pytest.fixture
def sessions(db_url) -> Iterator[sessionmaker[Session]]:
    upgrade_database(db_url)
    engine = make_engine(db_url)
    yield session_factory(engine)
    engine.dispose()


def families(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """{family name: {sorted labels of a sample: value}}; samples of a family's own name only
    (counters: `_total`)."""
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        samples = out.setdefault(family.name, {})
        for sample in family.samples:
            if sample.name in (family.name, f"{family.name}_total"):
                samples[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def seed_fleet(sessions: sessionmaker[Session], now: float) -> None:
    with sessions() as db:
        db.add(
            Bundle(
                digest=DIGEST,
                name="face",
                version=1,
                size=1,
                chunk_size=1,
                manifest={},
                path="x",
                created=now,
            )
        )
        for name, online in (("cam-a", True), ("cam-b", True), ("cam-c", False)):
            db.add(Device(id=name, online=online, first_seen=now - 100, last_seen=now - 5))
        db.flush()
        payload = {
            "cameras": [
                {"camera": "c0", "fps_processed": 7.5, "inference_ms": 12.0},
                {"camera": "c1", "fps_processed": 2.5, "inference_ms": 30.0},
            ],
            "temperatures_c": {"cpu": 55.0},
            "accelerators": [{"name": "tpu0", "kind": "tpu", "temperature_c": 61.5}],
        }
        db.add(DeviceHealth(device="cam-a", msg_id="m1", ts=now - 6, payload=payload, received=now))
        db.add(DeviceHealth(device="cam-b", msg_id="m2", ts=now - 6, payload={}, received=now))
        for i, status in enumerate(("running", "running", "failed")):
            db.add(
                Deployment(
                    id=f"d{i}",
                    device="cam-a",
                    bundle=DIGEST,
                    cmd_id=f"c{i}",
                    status=status,
                    created=now,
                    updated=now,
                )
            )
        db.add(
            RolloutRow(
                id="r1",
                name="r",
                bundle=DIGEST,
                selector={},
                spec={},
                state="running",
                created=now,
                updated=now,
            )
        )
        db.commit()


def test_metrics_parse_with_fleet_families_and_http_counts(sessions, tmp_path):
    now = time.time()
    seed_fleet(sessions, now)
    app = make_app(sessions, tmp_path)
    with TestClient(app, base_url="http://localhost", headers=auth_headers(sessions)) as client:
        for _ in range(3):
            assert client.get("/api/devices/cam-a").status_code == 200
        assert client.get("/api/devices/nobody").status_code == 404
        assert client.get("/no/such/route").status_code == 404
        scraped = client.get("/metrics")
    assert scraped.status_code == 200
    assert scraped.headers["content-type"].startswith("text/plain")
    metrics = families(scraped.text)

    # the names that dashboards, tests and the README already use
    for name in (
        "edgefleet_ingest_received",
        "edgefleet_ingest_stored",
        "edgefleet_ingest_rejected",
        "edgefleet_ingest_lag_seconds",
        "edgefleet_ingest_latency_seconds",
        "edgefleet_ingest_queued",
        "edgefleet_ingest_unacked",
        "edgefleet_ingest_journal_bytes",
        "edgefleet_ingest_journal_failures",
        "edgefleet_mqtt_inflight",
        "edgefleet_chunks_sent",
        "edgefleet_chunk_readers",
        "edgefleet_chunk_readers_released",
        "edgefleet_chunk_window_wait_seconds",
    ):
        assert name in metrics, name
    assert metrics["edgefleet_chunk_readers"][()] == 0
    assert metrics["edgefleet_devices"][()] == 3
    assert metrics["edgefleet_devices_online"][()] == 2
    assert metrics["edgefleet_database_up"][()] == 1

    deployments = metrics["edgefleet_deployments"]
    assert deployments[(("status", "running"),)] == 2
    assert deployments[(("status", "failed"),)] == 1
    assert deployments[(("status", "pending"),)] == 0  # every known status, even at zero
    assert metrics["edgefleet_rollouts"][(("status", "running"),)] == 1
    assert metrics["edgefleet_rollouts"][(("status", "completed"),)] == 0

    a = (("device", "cam-a"),)
    assert metrics["edgefleet_device_fps"][a] == 10.0
    assert metrics["edgefleet_device_inference_ms"][a] == 30.0
    assert metrics["edgefleet_device_temperature_celsius"][a] == 61.5
    # a device whose health says nothing gets no temperature; one without health only last_seen
    assert (("device", "cam-b"),) not in metrics["edgefleet_device_temperature_celsius"]
    assert (("device", "cam-c"),) not in metrics["edgefleet_device_fps"]
    seen = metrics["edgefleet_device_last_seen_timestamp_seconds"]
    assert seen[(("device", "cam-c"),)] == pytest.approx(now - 5)
    assert 0 <= metrics["edgefleet_ingest_newest_health_age_seconds"][()] < 60

    requests = metrics["edgefleet_http_requests"]
    route = (("method", "GET"), ("route", "/api/devices/{device_id}"))
    assert requests[(*route, ("status", "200"))] == 3
    assert requests[(*route, ("status", "404"))] == 1
    assert requests[(("method", "GET"), ("route", "unmatched"), ("status", "404"))] == 1
    # raw paths never become label values
    assert not any("cam-a" in dict(labels)["route"] for labels in requests)
    durations = next(
        f
        for f in text_string_to_metric_families(scraped.text)
        if f.name == "edgefleet_http_request_duration_seconds"
    )
    counts = {s.labels["route"]: s.value for s in durations.samples if s.name.endswith("_count")}
    assert counts["/api/devices/{device_id}"] == 4


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_two_apps_in_one_process_count_their_own_requests(sessions, tmp_path):
    first, second = make_app(sessions, tmp_path), make_app(sessions, tmp_path)
    with (
        TestClient(first, base_url="http://localhost", client=LOOPBACK) as one,
        TestClient(second, base_url="http://localhost", client=LOOPBACK) as two,
    ):
        for _ in range(4):
            one.get("/livez")
        two.get("/livez")
        counted = [
            families(c.get("/metrics").text)["edgefleet_http_requests"][
                (("method", "GET"), ("route", "/livez"), ("status", "200"))
            ]
            for c in (one, two)
        ]
    assert counted == [4, 1]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_ten_thousand_devices_scrape_quickly_and_the_series_are_capped(sessions, tmp_path):
    now = time.time()
    count = 10_000
    payload = {"cameras": [{"camera": "c0", "fps_processed": 5.0, "inference_ms": 20.0}]}
    with sessions() as db:
        db.execute(
            insert(Device),
            [
                {"id": f"dev-{i:05d}", "online": True, "first_seen": now, "last_seen": now}
                for i in range(count)
            ],
        )
        db.execute(
            insert(DeviceHealth),
            [
                {
                    "device": f"dev-{i:05d}",
                    "msg_id": f"m{i}",
                    "ts": now,
                    "payload": payload,
                    "received": now,
                }
                for i in range(count)
            ],
        )
        db.commit()
    full = make_app(sessions, tmp_path)
    capped = make_app(sessions, tmp_path, metrics_max_devices=100)
    with TestClient(full, base_url="http://localhost", client=LOOPBACK) as client:
        client.get("/metrics")  # warm
        started = time.perf_counter()
        scraped = client.get("/metrics")
        elapsed = time.perf_counter() - started
    metrics = families(scraped.text)
    assert len(metrics["edgefleet_device_fps"]) == count
    assert len(metrics["edgefleet_device_last_seen_timestamp_seconds"]) == count
    assert metrics["edgefleet_device_series_dropped"][()] == 0
    # one row per device, read once per scrape: well under a scrape interval on a small box
    assert elapsed < 3.0, elapsed

    with TestClient(capped, base_url="http://localhost", client=LOOPBACK) as client:
        metrics = families(client.get("/metrics").text)
    assert sorted(metrics["edgefleet_device_fps"])[:1] == [(("device", "dev-00000"),)]
    assert len(metrics["edgefleet_device_fps"]) == 100
    assert metrics["edgefleet_device_series_dropped"][()] == count - 100
    assert metrics["edgefleet_devices"][()] == count


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_probes_are_open_and_ready_needs_mqtt(sessions, tmp_path):
    with TestClient(make_app(sessions, tmp_path), base_url="http://localhost") as anon:
        assert anon.get("/livez").json() == {"status": "ok"}
        ready = anon.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {"status": "ready", "database": True, "mqtt": True, "reasons": []}
        assert anon.get("/healthz").status_code == 200
        # the metrics are not open off loopback
        assert anon.get("/metrics").status_code == 401

    offline = make_app(sessions, tmp_path, mqtt_ready=False)
    with TestClient(offline, base_url="http://localhost") as anon:
        ready = anon.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["reasons"] == ["mqtt sessions not connected"]
        assert ready.json()["database"] is True
        assert anon.get("/livez").status_code == 200


def test_database_down_readyz_503_livez_200_metrics_still_served(tmp_path):
    # a PostgreSQL server that is not there: nothing listens on the port
    engine = create_engine(f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/none")
    sessions = session_factory(engine)
    app = make_app(sessions, tmp_path, transfer_tokens=TransferTokens(b"k" * 32))
    try:
        with TestClient(app, base_url="http://localhost", client=LOOPBACK) as client:
            assert client.get("/livez").status_code == 200
            ready = client.get("/readyz")
            assert ready.status_code == 503
            body = ready.json()
            assert body["status"] == "not_ready" and body["database"] is False
            assert body["reasons"][0].startswith("database unreachable: ")
            assert client.get("/healthz").status_code == 503
            scraped = client.get("/metrics")
        assert scraped.status_code == 200
        metrics = families(scraped.text)
        assert metrics["edgefleet_database_up"][()] == 0
        assert "edgefleet_ingest_received" in metrics
        assert "edgefleet_devices" not in metrics
        readyz = (("method", "GET"), ("route", "/readyz"), ("status", "503"))
        assert metrics["edgefleet_http_requests"][readyz] == 1
    finally:
        engine.dispose()
