"""The ingest at scale: several sessions, health kept three ways, misaddressed events and
oversized payloads refused; real mosquitto, real SQLite and PostgreSQL."""

from __future__ import annotations

import logging
import time
import uuid

import pytest
from sqlalchemy import func, select

from controller.db import (
    Bundle,
    Deployment,
    DetectionRow,
    Device,
    DeviceHealth,
    EventRow,
    HealthRollup,
    HealthRow,
)
from controller.demo.waiting import wait_until
from controller.mqtt.ingest import DEFAULT_SHARE_GROUP, SESSIONS_FILE
from protocol.events import EventKind
from protocol.messages import (
    Ack,
    Box,
    CameraHealth,
    Detection,
    DetectionBatch,
    Event,
    Health,
)
from tests.controller.fake_agents import FakeAgent

DIGEST = "cd" * 32


@pytest.fixture
def agents(mosquitto):
    made: list[FakeAgent] = []

    def make(device: str) -> FakeAgent:
        agent = FakeAgent(mosquitto.host, mosquitto.port, device)
        made.append(agent)
        return agent

    yield make
    for agent in made:
        agent.close()


def count(sessions, model) -> int:
    with sessions() as s:
        return s.scalar(select(func.count()).select_from(model)) or 0


def batch(device: str) -> DetectionBatch:
    box = Box(x1=0.1, y1=0.2, x2=0.3, y2=0.4)
    det = Detection(camera="cam0", label="face", score=0.9, box=box, ts=time.time())
    return DetectionBatch(device=device, model="face@1", runtime="litert", detections=(det,))


def test_several_sessions_share_the_stream_and_store_each_message_once(
    start_ingest, agents, sessions
):
    ingest = start_ingest(sessions=3)
    assert all(f.startswith(f"$share/{DEFAULT_SHARE_GROUP}/") for f, _ in ingest.subscriptions())
    senders = [agents(f"cam-{i}") for i in range(3)]
    sent = [batch(a.device) for a in senders for _ in range(40)]
    by_id = {a.device: a for a in senders}
    for message in sent:
        by_id[message.device].send(message, "det")
    wait_until("all stored", lambda: count(sessions, DetectionRow) == len(sent))
    snap = ingest.stats.snapshot()
    assert snap["received"] == len(sent)  # no session got a copy of another's messages
    assert snap["stored"]["det"] == len(sent)
    wait_until("all acknowledged", lambda: ingest.stats.snapshot()["unacked"] == 0)
    with sessions() as s:
        stored = set(s.scalars(select(DetectionRow.id)))
    assert stored == {m.detections[0].id for m in sent}


def test_a_session_that_had_a_plain_subscription_does_not_get_every_message_twice(
    start_ingest, agents, sessions
):
    start_ingest(sessions=1).stop()  # the broker keeps this session's plain subscription
    ingest = start_ingest(sessions=2)
    agent = agents("cam-a")
    for _ in range(30):
        agent.send(batch("cam-a"), "det")
    wait_until("all stored", lambda: count(sessions, DetectionRow) == 30)
    time.sleep(0.3)  # a second copy would arrive right behind the first
    assert ingest.stats.snapshot()["received"] == 30


def health(device: str, ts: float, cpu: float, temp: float | None = None) -> Health:
    cams = (CameraHealth(camera="cam0", fps_in=10.0, fps_processed=8.0, inference_ms=5.0),)
    return Health(
        device=device,
        ts=ts,
        cpu_percent=cpu,
        temperatures_c={"soc": temp} if temp is not None else {},
        cameras=cams,
    )


def test_health_keeps_the_latest_a_rollup_per_minute_and_sampled_history(
    start_ingest, agents, sessions
):
    ingest = start_ingest(health_history_s=60)
    agent = agents("cam-h")
    minute = (int(time.time()) // 60 - 5) * 60
    samples = [
        health("cam-h", minute + 1, 10.0, 40.0),
        health("cam-h", minute + 11, 30.0),
        health("cam-h", minute + 21, 20.0, 55.0),
        health("cam-h", minute + 61, 50.0, 45.0),  # the next minute, and past the interval
    ]
    for sample in samples:
        agent.send(sample, "health")
    wait_until(
        "every sample counted",
        lambda: ingest.stats.snapshot()["stored"].get("health") == 4,
    )
    assert ingest.stats.snapshot()["stored"]["health_downsampled"] == 2
    with sessions() as s:
        latest = s.get(DeviceHealth, "cam-h")
        assert latest is not None and latest.msg_id == samples[-1].id
        assert latest.payload["cpu_percent"] == 50.0
        rollups = {r.minute: r for r in s.scalars(select(HealthRollup))}
        first = rollups[minute // 60]
        assert (first.samples, first.cpu_sum, first.cpu_max) == (3, 60.0, 30.0)
        assert first.temp_max == 55.0 and first.fps_in_sum == 30.0
        assert rollups[minute // 60 + 1].samples == 1
        history = set(s.scalars(select(HealthRow.msg_id)))
    # the first of each device's minutes to arrive (sessions may reorder QoS 0 messages)
    assert len(history) == 2 and samples[3].id in history


def test_an_older_sample_never_replaces_the_latest(start_ingest, agents, sessions):
    start_ingest()
    agent = agents("cam-o")
    now = time.time()
    agent.send(health("cam-o", now, 70.0), "health")
    wait_until("stored", lambda: count(sessions, DeviceHealth) == 1)
    agent.send(health("cam-o", now - 30, 10.0), "health")
    wait_until("folded", lambda: count(sessions, HealthRollup) >= 1 and _samples(sessions) == 2)
    with sessions() as s:
        latest = s.get(DeviceHealth, "cam-o")
        assert latest is not None and latest.payload["cpu_percent"] == 70.0


def _samples(sessions) -> int:
    with sessions() as s:
        return int(s.scalar(select(func.sum(HealthRollup.samples))) or 0)


def _deployment_for(sessions, device: str, cmd_id: str) -> None:
    now = time.time()
    with sessions() as s, s.begin():
        s.add(Device(id=device, first_seen=now, last_seen=now))
        s.merge(
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
        s.add(
            Deployment(
                id=uuid.uuid4().hex,
                device=device,
                bundle=DIGEST,
                cmd_id=cmd_id,
                status="offered",
                created=now,
                updated=now,
            )
        )


def test_acks_and_events_for_another_devices_command_are_dropped_and_counted(
    start_ingest, agents, sessions, caplog
):
    _deployment_for(sessions, "cam-owner", "cmd-owned")
    ingest = start_ingest()
    intruder = agents("cam-intruder")
    with caplog.at_level(logging.WARNING, logger="controller.mqtt.ingest"):
        intruder.send(Ack(device="cam-intruder", cmd_id="cmd-owned", ok=False), "ack")
        intruder.send(
            Event(
                device="cam-intruder",
                kind=EventKind.FAILED,
                bundle=DIGEST,
                cmd_id="cmd-owned",
                reason="x",
            ),
            "evt",
        )
        owner = agents("cam-owner")
        owner.send(Ack(device="cam-owner", cmd_id="cmd-owned", ok=True), "ack")
        intruder.send(Event(device="cam-intruder", kind=EventKind.LOG, message="hi"), "evt")
        wait_until("legitimate messages stored", lambda: count(sessions, EventRow) == 2)
        wait_until(
            "forged ones counted",
            lambda: ingest.stats.snapshot()["rejected"].get("misaddressed") == 2,
        )
    with sessions() as s:
        rows = {(r.device, r.kind) for r in s.scalars(select(EventRow))}
        status = s.scalar(select(Deployment.status).where(Deployment.cmd_id == "cmd-owned"))
    assert rows == {("cam-owner", "ack"), ("cam-intruder", "log")}
    assert status != "failed"
    assert any("code=misaddressed" in r.getMessage() for r in caplog.records)


def test_oversized_payloads_are_dropped_counted_and_logged_and_the_stream_goes_on(
    start_ingest, agents, sessions, caplog
):
    ingest = start_ingest(max_payload_bytes=2048)
    agent = agents("cam-big")
    many = tuple(d for _ in range(20) for d in batch("cam-big").detections)
    big = DetectionBatch(device="cam-big", model="m" * 200, runtime="litert", detections=many)
    with caplog.at_level(logging.WARNING, logger="controller.mqtt.ingest"):
        agent.send(big, "det")
        agent.send(batch("cam-big"), "det")
        wait_until("the small one stored", lambda: count(sessions, DetectionRow) == 1)
    snap = ingest.stats.snapshot()
    assert snap["rejected"] == {"payload_too_large": 1}
    assert snap["unacked"] == 0  # acknowledged, so it holds no slot of the broker's window
    assert any(
        "code=payload_too_large topic=edgefleet/v1/dev/cam-big/det" in r.getMessage()
        for r in caplog.records
    )


def test_sessions_of_an_earlier_larger_count_hand_over_what_was_queued_for_them(
    start_ingest, agents, sessions, monkeypatch, tmp_path
):
    monkeypatch.setattr("controller.mqtt.ingest.RETIRED_IDLE_S", 0.5)
    record = tmp_path / "ingest-journal" / SESSIONS_FILE
    start_ingest(sessions=4).stop()
    assert record.read_text().strip() == "4"
    agent = agents("cam-s")
    # nobody runs: the broker queues the messages over the group's four sessions
    for _ in range(40):
        agent.send(batch("cam-s"), "det")
    ingest = start_ingest(sessions=2)
    wait_until("all stored", lambda: count(sessions, DetectionRow) == 40)
    wait_until("the extra sessions forgotten", lambda: record.read_text().strip() == "2")
    # they subscribe nothing any more: new messages go to sessions 0 and 1 only
    before = [ingest.stats.session_received(i) for i in (2, 3)]
    for _ in range(30):
        agent.send(batch("cam-s"), "det")
    wait_until("the rest stored", lambda: count(sessions, DetectionRow) == 70)
    assert [ingest.stats.session_received(i) for i in (2, 3)] == before
    ingest.stop()
    # the next start opens two sessions only
    assert len(start_ingest(sessions=2)._receiver.client_ids) == 2
