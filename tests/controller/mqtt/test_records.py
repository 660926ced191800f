"""The ingest's batch writer against each database: what it stores is what was sent, once."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.exc import DataError

from controller.db import DetectionRow, EventRow
from controller.mqtt.records import (
    _DETECTIONS,
    Accepted,
    HealthSampler,
    WriteState,
    _insert_ignoring_duplicates,
    write_batch,
)
from protocol.events import EventKind
from protocol.messages import Ack, Box, Detection, DetectionBatch, Event
from protocol.topics import Channel

NOW = 1_796_000_000.0


def _batch(device: str, n: int, *, first: int = 0) -> Accepted:
    detections = tuple(
        Detection(
            id=f"{device}-det-{i:04d}",
            camera="cam0",
            # JSON may give an int where a float is meant, and optional fields may be absent
            track_id=i if i % 2 else None,
            label="face" if i % 3 else "person",
            score=1 if i == first else 0.5,
            box=Box(x1=0, y1=0.25, x2=0.5, y2=1),
            ts=NOW + i,
            snapshot=None if i % 2 else f"snap-{i}",
        )
        for i in range(first, first + n)
    )
    msg = DetectionBatch(
        device=device, ts=NOW, model="m@1", runtime="litert", detections=detections
    )
    return Accepted(device, Channel.DET, msg, NOW + 0.5)


def _write(sessions, batch: list[Accepted]) -> None:
    with sessions() as s, s.begin():
        write_batch(s, batch, NOW + 1, WriteState(HealthSampler(60)))


def test_detections_and_events_are_stored_as_sent_and_once(sessions):
    first = _batch("cam-a", 50)
    # a redelivered batch, overlapping the first by half, and another device's
    again = _batch("cam-a", 50, first=25)
    other = _batch("cam-b", 3)
    event = Event(device="cam-a", kind=EventKind.INSTALLING, bundle="ab" * 32, ts=NOW)
    ack = Ack(device="cam-b", cmd_id="cmd-1", ok=False, detail="no space", ts=NOW)
    events = [
        Accepted("cam-a", Channel.EVT, event, NOW),
        Accepted("cam-b", Channel.ACK, ack, NOW),
    ]
    _write(sessions, [first, other, *events])
    _write(sessions, [again, *events])

    with sessions() as s:
        rows = {r.id: r for r in s.scalars(select(DetectionRow))}
        stored_events = {r.id: r for r in s.scalars(select(EventRow))}
    assert len(rows) == 75 + 3
    one = rows["cam-a-det-0000"]
    assert (one.score, one.x1, one.y2, one.track_id, one.snapshot) == (
        1.0,
        0.0,
        1.0,
        None,
        "snap-0",
    )
    assert isinstance(one.score, float)
    odd = rows["cam-a-det-0061"]
    assert (odd.track_id, odd.snapshot, odd.label, odd.ts) == (61, None, "face", NOW + 61)
    assert (odd.device, odd.model, odd.runtime, odd.received) == (
        "cam-a",
        "m@1",
        "litert",
        NOW + 0.5,
    )
    assert stored_events[event.id].bundle == "ab" * 32
    assert stored_events[event.id].reason is None
    assert (stored_events[ack.id].level, stored_events[ack.id].message) == ("error", "no space")


def test_a_value_too_long_for_its_column_is_refused_not_cut(sessions):
    with sessions() as s:
        if s.get_bind().dialect.name != "postgresql":
            pytest.skip("SQLite does not enforce a varchar's length")
    row: dict[str, object] = {c.name: None for c in _DETECTIONS.c}
    row.update(
        id="x" * 65, device="cam-a", camera="cam0", event="update", label="face", score=0.5,
        x1=0.0, y1=0.0, x2=1.0, y2=1.0, ts=NOW, model="", runtime="", received=NOW,
    )  # fmt: skip
    _write(sessions, [_batch("cam-a", 1)])  # the device exists
    with pytest.raises(DataError), sessions() as s, s.begin():
        _insert_ignoring_duplicates(s, _DETECTIONS, [row], ["id", "ts"])
