"""The MQTT ingest against a real mosquitto and real databases (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import logging

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from controller.db import (
    DetectionRow,
    Device,
    EventRow,
    HealthRollup,
    HealthRow,
)
from controller.demo.waiting import wait_until
from protocol.codec import encode
from protocol.events import DeviceStatus, EventKind
from protocol.messages import (
    Ack,
    ActiveBundle,
    Box,
    CameraHealth,
    Detection,
    DetectionBatch,
    Event,
    Health,
    RuntimeInfo,
    State,
)
from tests.controller.fake_agents import FakeAgent

DIGEST = "ab" * 32


@pytest.fixture
def agent(mosquitto):
    one = FakeAgent(mosquitto.host, mosquitto.port, "cam-a")
    yield one
    one.close()


def count(sessions, model) -> int:
    with sessions() as s:
        return s.scalar(select(func.count()).select_from(model)) or 0


def detection_batch(device: str, n: int = 1, label: str = "face") -> DetectionBatch:
    box = Box(x1=0.1, y1=0.2, x2=0.3, y2=0.4)
    dets = tuple(
        Detection(camera="cam0", label=label, score=0.9, box=box, ts=1000.0 + i) for i in range(n)
    )
    return DetectionBatch(device=device, model="face@1", runtime="litert", detections=dets)


def test_stores_state_health_detections_and_events(start_ingest, agent, sessions):
    start_ingest()
    active = ActiveBundle(name="face", version=2, digest=DIGEST, runtime="litert", reason="first")
    runtimes = (RuntimeInfo(key="litert", available=True),)
    agent.online(agent_version="0.1.0", profile="rpi4", runtimes=runtimes, active=active)
    agent.send(
        Health(device="cam-a", cpu_percent=12.5, cameras=(CameraHealth(camera="cam0"),)), "health"
    )
    agent.send(detection_batch("cam-a", 3), "det")
    agent.send(Event(device="cam-a", kind=EventKind.RUNNING, bundle=DIGEST, message="ok"), "evt")
    agent.send(Ack(device="cam-a", cmd_id="cmd-1", ok=False, result="busy"), "ack")

    wait_until("event and ack stored", lambda: count(sessions, EventRow) == 2)
    wait_until(
        "detections and health stored",
        lambda: count(sessions, DetectionRow) == 3 and count(sessions, HealthRow) == 1,
    )
    with sessions() as s:
        device = s.get(Device, "cam-a")
        assert device is not None and device.online and device.status == "online"
        assert (device.profile, device.agent_version) == ("rpi4", "0.1.0")
        assert (device.active_name, device.active_version, device.active_runtime) == (
            "face",
            2,
            "litert",
        )
        assert device.runtimes[0]["key"] == "litert"
        det = s.scalars(select(DetectionRow)).first()
        assert det is not None and (det.label, det.model, det.runtime) == (
            "face",
            "face@1",
            "litert",
        )
        assert (det.x1, det.y2) == (0.1, 0.4)
        ack = s.scalar(select(EventRow).where(EventRow.kind == "ack"))
        assert ack is not None and (ack.cmd_id, ack.reason, ack.level) == ("cmd-1", "busy", "error")
        health = s.scalars(select(HealthRow)).one()
        assert health.payload["cpu_percent"] == 12.5


def test_the_last_will_marks_the_device_offline_and_keeps_its_details(
    start_ingest, mosquitto, sessions
):
    start_ingest()
    doomed = FakeAgent(mosquitto.host, mosquitto.port, "cam-will")
    doomed.online(profile="jetson-nano")
    wait_until("device online", lambda: count(sessions, Device) == 1)
    doomed.crash()

    def offline():
        with sessions() as s:
            device = s.get(Device, "cam-will")
            return device is not None and not device.online and device

    device = wait_until("last will stored", offline)
    assert device.status == "offline" and device.profile == "jetson-nano"


def test_duplicate_ids_are_stored_once(start_ingest, agent, sessions):
    ingest = start_ingest()
    batch = detection_batch("cam-a", 5)
    event = Event(device="cam-a", kind=EventKind.LOG, message="hello")
    for _ in range(3):
        agent.send(batch, "det")
        agent.send(event, "evt")
    wait_until("all batches", lambda: ingest.stats.snapshot()["stored"].get("det") == 3)
    wait_until("all events", lambda: ingest.stats.snapshot()["stored"].get("evt") == 3)
    assert count(sessions, DetectionRow) == 5
    assert count(sessions, EventRow) == 1


class FailingCommits:
    """Makes every commit fail like a database that went away, while `failing` is set."""

    def __init__(self) -> None:
        self.failing = False

    def in_transaction(self, session, batch) -> None:
        if self.failing:
            raise OperationalError("INSERT", {}, ConnectionError("database went away"))

    def after_commit(self, batch) -> None:
        pass


@pytest.mark.parametrize("journal", [True, False], ids=["journal", "no-journal"])
def test_messages_not_committed_before_a_crash_arrive_after_restart(
    start_ingest, agent, sessions, journal
):
    hook = FailingCommits()
    first = start_ingest(hooks=[hook], journal=journal)
    committed = [detection_batch("cam-a") for _ in range(10)]
    for batch in committed:
        agent.send(batch, "det")
    wait_until("first messages stored", lambda: count(sessions, DetectionRow) == 10)

    hook.failing = True
    stranded = [detection_batch("cam-a") for _ in range(15)]
    for batch in stranded:
        agent.send(batch, "det")
    wait_until("messages received", lambda: first.stats.snapshot()["received"] >= 25)
    wait_until("commits failing", lambda: first.stats.snapshot()["commit_failures"] >= 2)
    first.stop(timeout=0.3)  # cannot commit: gives up without acknowledging anything
    assert count(sessions, DetectionRow) == 10

    if journal:
        # synced to the journal, so acknowledged although the database never took them
        assert first.stats.snapshot()["unacked"] == 0

    # same client id (the broker kept what was not acknowledged) and journal folder
    second = start_ingest(journal=journal)
    wait_until("stranded messages stored", lambda: count(sessions, DetectionRow) == 25)
    with sessions() as s:
        stored = set(s.scalars(select(DetectionRow.id)))
    expected = {b.detections[0].id for b in committed + stranded}
    assert stored == expected
    if journal:
        assert second.stats.snapshot()["received"] == 0  # read back from the journal
    else:
        assert second.stats.snapshot()["received"] >= 15  # delivered again by the broker


def test_journalled_messages_are_stored_exactly_once_across_restarts(start_ingest, sessions):
    """Health rollups add every sample up: a message stored twice would show there."""
    hook = FailingCommits()
    first = start_ingest(hooks=[hook])
    agents = [FakeAgent("127.0.0.1", first.mqtt_settings.port, f"cam-{i}") for i in range(3)]
    try:
        for i, one in enumerate(agents):
            one.send(health(one.device, 1000.0 + i), "health")
        wait_until("first samples stored", lambda: rollup_samples(sessions) == 3)
        hook.failing = True
        for round_ in range(4):
            for one in agents:
                one.send(health(one.device, 1010.0 + round_), "health")
                one.send(detection_batch(one.device), "det")
        wait_until("all synced", lambda: first.stats.snapshot()["received"] >= 27)
        wait_until("all acknowledged", lambda: first.stats.snapshot()["unacked"] == 0)
        first.stop(timeout=0.3)
        second = start_ingest()
        wait_until("journal replayed", lambda: count(sessions, DetectionRow) == 12)
        wait_until("samples stored", lambda: rollup_samples(sessions) == 15)
        second.stop()
        start_ingest()  # a third start finds nothing more to replay
        agents[0].send(detection_batch("cam-0"), "det")
        wait_until("a new message stored", lambda: count(sessions, DetectionRow) == 13)
        assert rollup_samples(sessions) == 15
    finally:
        for one in agents:
            one.close()


def rollup_samples(sessions) -> int:
    with sessions() as s:
        return s.scalar(select(func.coalesce(func.sum(HealthRollup.samples), 0))) or 0


def health(device: str, ts: float) -> Health:
    cams = (CameraHealth(camera="cam0", fps_in=10.0, fps_processed=8.0, inference_ms=5.0),)
    return Health(device=device, ts=ts, cpu_percent=10.0, cameras=cams)


def test_messages_sent_while_the_controller_is_down_are_delivered(start_ingest, agent, sessions):
    first = start_ingest()
    sent = [detection_batch("cam-a") for _ in range(40)]
    for batch in sent[:20]:
        agent.send(batch, "det")
    first.stop()  # a clean stop in the middle of the stream
    for batch in sent[20:]:
        agent.send(batch, "det")
    start_ingest()
    wait_until("all 40 messages stored", lambda: count(sessions, DetectionRow) == 40)


def _valid_payloads(device: str) -> dict[str, dict]:
    messages = {
        "state": State(device=device, status=DeviceStatus.ONLINE),
        "health": Health(device=device),
        "det": detection_batch(device),
        "evt": Event(device=device, kind=EventKind.LOG),
        "ack": Ack(device=device, cmd_id="c1", ok=True),
    }
    return {channel: json.loads(encode(m)) for channel, m in messages.items()}


def test_garbage_on_every_channel_is_counted_and_good_messages_still_stored(
    start_ingest, agent, sessions, caplog
):
    ingest = start_ingest()
    prefix = agent.topics.prefix
    with caplog.at_level(logging.WARNING, logger="controller.mqtt.ingest"):
        for channel, valid in _valid_payloads("cam-a").items():
            topic = f"{prefix}/dev/cam-a/{channel}"
            text = json.dumps(valid)
            agent.publish_raw(topic, b"\xff not json {")
            agent.publish_raw(topic, json.dumps({**valid, "ts": float("nan")}).encode())
            agent.publish_raw(topic, json.dumps({**valid, "ts": "yesterday"}).encode())
            agent.publish_raw(topic, json.dumps({**valid, "v": "2.0"}).encode())
            agent.publish_raw(topic, json.dumps({**valid, "pad": "x" * 300_000}).encode())
            agent.publish_raw(topic, json.dumps({**valid, "device": "cam-b"}).encode())
            agent.publish_raw(f"{prefix}/dev/Not_A_Device/{channel}", text.encode())
        agent.send(detection_batch("cam-a", 2), "det")
        wait_until("good message after garbage", lambda: count(sessions, DetectionRow) == 2)
    assert ingest.stats.snapshot()["rejected"] == {
        "malformed_payload": 15,
        "unsupported_version": 5,
        "payload_too_large": 5,
        "unexpected_message": 5,
        "invalid_device_id": 5,
    }
    lines = [r.getMessage() for r in caplog.records if "event=ingest_rejected" in r.getMessage()]
    assert len(lines) == 35
    assert any("code=payload_too_large topic=edgefleet/v1/dev/cam-a/det" in x for x in lines)
    assert all("\n" not in line for line in lines)
    assert count(sessions, Device) == 1  # garbage never created devices


def test_past_the_journal_limit_messages_wait_for_their_commit(start_ingest, agent, sessions):
    hook = FailingCommits()
    hook.failing = True  # the database is away: the journal fills
    ingest = start_ingest(hooks=[hook], journal_max_bytes=1 << 20)
    sent = [detection_batch("cam-a", n=40) for _ in range(250)]  # about 2 MB
    for batch in sent:
        agent.send(batch, "det")
    wait_until("journal past its limit", lambda: ingest.stats.snapshot()["journal_bytes"] > 1 << 20)
    # past the limit nothing more is acknowledged before its commit
    wait_until("messages held unacknowledged", lambda: ingest.stats.snapshot()["unacked"] > 0)

    hook.failing = False
    wait_until("all stored", lambda: count(sessions, DetectionRow) == 250 * 40)
    wait_until("all acknowledged", lambda: ingest.stats.snapshot()["unacked"] == 0)
    wait_until("journal drained", lambda: ingest.stats.snapshot()["journal_bytes"] == 0)
