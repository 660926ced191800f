"""Ingest worker processes: they take detections and health, the controller keeps events; a
killed worker is started again and loses nothing; stopping the controller stops them. Real
mosquitto, real processes, SQLite and PostgreSQL."""

from __future__ import annotations

import logging
import os
import signal
import time

import pytest
from pydantic import ValidationError
from sqlalchemy import func, select

from controller.db import DetectionRow, EventRow, HealthRollup
from controller.demo.waiting import wait_until
from controller.mqtt.ingest import LATENCY_BUCKETS_S, merge_snapshots
from controller.mqtt.workers import journal_dir, retired_workers
from controller.server import Controller
from controller.settings import ControllerSettings, IngestSettings, MqttSettings
from protocol.events import EventKind
from protocol.messages import Box, CameraHealth, Detection, DetectionBatch, Event, Health
from tests.controller.fake_agents import FakeAgent

INF = float("inf")


def snapshot(**values) -> dict:
    base = {
        "received": 0,
        "stored": {},
        "rejected": {},
        "batches": 0,
        "commit_failures": 0,
        "last_commit_ms": 0.0,
        "queued": 0,
        "journal_bytes": 0,
        "journal_failures": 0,
        "unacked": 0,
        "lag_s": 0.0,
        "latency_buckets": dict.fromkeys([*LATENCY_BUCKETS_S, INF], 0),
        "latency_sum_s": 0.0,
    }
    return {**base, **values}


def test_snapshots_of_several_ingests_add_up_and_the_slowest_stands():
    one = snapshot(
        received=10, stored={"det": 8}, batches=2, lag_s=0.5, queued=3, latency_sum_s=1.0
    )
    one["latency_buckets"][0.005] = 8
    two = snapshot(
        received=5,
        stored={"det": 2, "health": 3},
        rejected={"overload": 1},
        batches=1,
        lag_s=0.2,
        last_commit_ms=40.0,
        queued=4,
    )
    two["latency_buckets"][INF] = 2
    merged = merge_snapshots([one, two])
    assert merged["received"] == 15 and merged["batches"] == 3 and merged["queued"] == 7
    assert merged["stored"] == {"det": 10, "health": 3} and merged["rejected"] == {"overload": 1}
    assert merged["lag_s"] == 0.5 and merged["last_commit_ms"] == 40.0
    assert merged["latency_buckets"][0.005] == 8 and merged["latency_buckets"][INF] == 2
    assert list(merged["latency_buckets"]) == [*LATENCY_BUCKETS_S, INF]
    assert merge_snapshots([one]) is one


def detections(device: str, n: int) -> list[DetectionBatch]:
    box = Box(x1=0.1, y1=0.2, x2=0.3, y2=0.4)
    return [
        DetectionBatch(
            device=device,
            model="face@1",
            runtime="litert",
            detections=(Detection(camera="c", label="face", score=0.9, box=box, ts=time.time()),),
        )
        for _ in range(n)
    ]


def health(device: str) -> Health:
    cams = (CameraHealth(camera="c", fps_in=10.0, fps_processed=8.0, inference_ms=5.0),)
    return Health(device=device, cpu_percent=10.0, cameras=cams)


def count(ctl: Controller, model) -> int:
    with ctl.sessions() as s:
        return s.scalar(select(func.count()).select_from(model)) or 0


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone for our purpose
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_workers_take_detections_and_health_and_the_controller_keeps_events(
    controller_settings, mosquitto, caplog
):
    caplog.set_level(logging.INFO, logger="controller.mqtt.workers")
    settings = controller_settings(ingest=IngestSettings(max_delay_s=0.05, sessions=2))
    # first without workers: the controller's persistent sessions subscribe every channel
    Controller(settings).start().stop()
    agent = FakeAgent(mosquitto.host, mosquitto.port, "cam-w")
    with_workers = settings.model_copy(
        update={"ingest": IngestSettings(max_delay_s=0.05, sessions=2, workers=2)}
    )
    try:
        with Controller(with_workers) as ctl:
            assert ctl.workers is not None
            filters = [f for f, _ in ctl.ingest.subscriptions()]
            assert not any(f.endswith(("/det", "/health")) for f in filters)
            assert any(f.endswith("/evt") for f in filters)
            wait_until("workers ready", ctl._mqtt_ready, timeout=30)
            pids = ctl.workers.pids()
            assert len(pids) == 2 and os.getpid() not in pids
            for message in detections("cam-w", 60):
                agent.send(message, "det")
            for _ in range(5):
                agent.send(health("cam-w"), "health")
            agent.send(Event(device="cam-w", kind=EventKind.RUNNING), "evt")
            wait_until("all stored", lambda: count(ctl, DetectionRow) == 60, timeout=20)
            wait_until("the event stored", lambda: count(ctl, EventRow) == 1)
            wait_until("health folded", lambda: count(ctl, HealthRollup) >= 1)
            wait_until(
                "counted",
                lambda: ctl.stats.snapshot()["stored"].get("health") == 5,
                timeout=10,
            )
            time.sleep(0.3)  # a second copy would arrive right behind the first
            merged = ctl.stats.snapshot()
            assert merged["stored"]["det"] == 60 and merged["stored"]["evt"] == 1
            # the controller's own sessions unsubscribed the bulk channels they once had
            own = ctl.stats.own_snapshot()
            assert own["stored"] == {"evt": 1} and own["received"] == 1
            assert count(ctl, DetectionRow) == 60
        for pid in pids:
            assert not alive(pid), "a worker outlived its controller"
        failed = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert failed == []  # each stopped cleanly, exit status 0
    finally:
        agent.close()


def test_a_killed_worker_is_started_again_and_loses_nothing(controller_settings, mosquitto, caplog):
    caplog.set_level(logging.INFO, logger="controller.mqtt.workers")
    settings = controller_settings(ingest=IngestSettings(max_delay_s=0.05, workers=1))
    agent = FakeAgent(mosquitto.host, mosquitto.port, "cam-k")
    try:
        with Controller(settings) as ctl:
            assert ctl.workers is not None
            wait_until("worker ready", ctl._mqtt_ready, timeout=30)
            first = detections("cam-k", 50)
            for message in first:
                agent.send(message, "det")
            wait_until("first stored", lambda: count(ctl, DetectionRow) == 50, timeout=20)
            wait_until("first counted", lambda: ctl.stats.snapshot()["stored"].get("det") == 50)
            [pid] = ctl.workers.pids()
            os.kill(pid, signal.SIGKILL)
            # sent while the worker is down: the broker keeps them for its session
            for message in detections("cam-k", 50):
                agent.send(message, "det")
            wait_until("all stored", lambda: count(ctl, DetectionRow) == 100, timeout=30)
            [again] = ctl.workers.pids()
            assert again != pid
            exited = [r.getMessage() for r in caplog.records if "ingest_worker_exited" in r.msg]
            assert len(exited) == 1 and f"pid={pid}" in exited[0]
            # the counters carry over the restart: they never go back
            wait_until(
                "counted", lambda: ctl.stats.snapshot()["stored"].get("det") == 100, timeout=10
            )
            assert ctl.stats.snapshot()["received"] >= 100
    finally:
        agent.close()


def test_the_automatic_count_is_one_worker_per_core_and_none_without_shared_subscriptions(
    monkeypatch,
):
    monkeypatch.setattr("controller.settings.MAX_AUTO_WORKERS", 4)
    assert IngestSettings().worker_count(cpus=1) == 0
    assert IngestSettings().worker_count(cpus=2) == 2
    assert IngestSettings().worker_count(cpus=16) == 4
    assert IngestSettings(sessions=1).worker_count(cpus=8) == 0
    assert IngestSettings(workers=3).worker_count(cpus=1) == 3
    with pytest.raises(ValidationError, match="workers_need_share_group"):
        ControllerSettings(ingest=IngestSettings(sessions=1, workers=2))
    # one worker needs no group: it and the controller take different channels
    assert ControllerSettings(ingest=IngestSettings(sessions=1, workers=1)).ingest.workers == 1
    shared = ControllerSettings(
        ingest=IngestSettings(sessions=1, workers=2), mqtt=MqttSettings(share_group="g")
    )
    assert shared.ingest.worker_count() == 2


def test_workers_of_an_earlier_larger_count_hand_over_what_they_held_and_retire(
    controller_settings, mosquitto, caplog
):
    caplog.set_level(logging.INFO, logger="controller.mqtt.workers")
    two = controller_settings(ingest=IngestSettings(max_delay_s=0.05, workers=2))
    one = two.model_copy(update={"ingest": IngestSettings(max_delay_s=0.05, workers=1)})
    with Controller(two) as ctl:
        wait_until("workers ready", ctl._mqtt_ready, timeout=30)
    gone = journal_dir(two.data_dir, 2)
    assert gone.is_dir()
    agent = FakeAgent(mosquitto.host, mosquitto.port, "cam-r")
    try:
        # nobody runs: the broker keeps the messages for the group's sessions, worker 2's too
        for message in detections("cam-r", 60):
            agent.send(message, "det")
        with Controller(one) as ctl:
            workers = ctl.workers
            assert workers is not None
            wait_until("worker 2 retired", lambda: not workers.retiring, timeout=30)
            assert not gone.exists()
            wait_until("all stored", lambda: count(ctl, DetectionRow) == 60, timeout=20)
            # worker 2's sessions left the group: everything goes to worker 1 now
            for message in detections("cam-r", 40):
                agent.send(message, "det")
            wait_until("the rest stored", lambda: count(ctl, DetectionRow) == 100, timeout=20)
            assert len(workers.pids()) == 1
        assert retired_workers(two.data_dir, 1) == []
        retired = [r.getMessage() for r in caplog.records if "worker_retired" in r.msg]
        assert retired == ["event=ingest_worker_retired index=2"]
    finally:
        agent.close()
