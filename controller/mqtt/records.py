"""Decoded agent messages turned into database rows, idempotent on message and detection ids."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from controller.db import DetectionRow, Device, EventRow, HealthRow
from protocol.events import DeviceStatus, EventLevel
from protocol.messages import Ack, AgentMessage, DetectionBatch, Event, Health, State
from protocol.topics import Channel

_DEVICES = cast(Table, Device.__table__)
_DETECTIONS = cast(Table, DetectionRow.__table__)
_HEALTH = cast(Table, HealthRow.__table__)
_EVENTS = cast(Table, EventRow.__table__)

ACK_KIND = "ack"
"""The events table's kind for a stored Ack; not an EventKind, since acks arrive on their own
channel rather than as `…/evt` events."""


@dataclass(frozen=True)
class Accepted:
    """A decoded agent message, ready to be stored."""

    device: str
    channel: Channel
    message: AgentMessage
    received: float


def idempotent_insert(session: Session, table: Table) -> Any:
    """The dialect's INSERT, which has `on_conflict_do_nothing`; SQLite and PostgreSQL only."""
    dialect = session.get_bind().dialect.name
    if dialect == "sqlite":
        return sqlite.insert(table)
    if dialect == "postgresql":
        return postgresql.insert(table)
    raise NotImplementedError(f"no idempotent insert for {dialect!r}")


def _state_values(state: State, now: float) -> dict[str, Any]:
    values: dict[str, Any] = {
        "online": state.status == DeviceStatus.ONLINE,
        "status": state.status,
        "last_seen": now,
    }
    if state.status == DeviceStatus.OFFLINE:
        # The Last Will carries no details; keep what the device told us while online.
        return values
    active = state.active
    values.update(
        profile=state.profile,
        agent_version=state.agent_version,
        runtimes=[r.model_dump(mode="json") for r in state.runtimes],
        cameras=list(state.cameras),
        active_name=active.name if active else None,
        active_version=active.version if active else None,
        active_digest=active.digest if active else None,
        active_runtime=active.runtime if active else None,
        active_reason=active.reason if active else None,
    )
    return values


def _detection_rows(batch: DetectionBatch, received: float) -> list[dict[str, Any]]:
    return [
        {
            "id": det.id,
            "device": batch.device,
            "camera": det.camera,
            "track_id": det.track_id,
            "event": det.event,
            "label": det.label,
            "score": det.score,
            "x1": det.box.x1,
            "y1": det.box.y1,
            "x2": det.box.x2,
            "y2": det.box.y2,
            "ts": det.ts,
            "model": batch.model,
            "runtime": batch.runtime,
            "snapshot": det.snapshot,
            "received": received,
        }
        for det in batch.detections
    ]


def _event_row(msg: Event | Ack, received: float) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": msg.id,
        "device": msg.device,
        "cmd_id": msg.cmd_id,
        "ts": msg.ts,
        "received": received,
    }
    if isinstance(msg, Ack):
        # acks are stored beside events, so one timeline shows a command and its answer
        row.update(
            kind=ACK_KIND,
            level=(EventLevel.INFO if msg.ok else EventLevel.ERROR).value,
            bundle=None,
            reason=msg.result or ("ok" if msg.ok else "refused"),
            message=msg.detail,
        )
    else:
        row.update(
            kind=msg.kind,
            level=msg.level,
            bundle=msg.bundle,
            reason=msg.reason,
            message=msg.message,
        )
    return row


def write_batch(session: Session, batch: Sequence[Accepted], now: float) -> Counter[str]:
    """Store decoded messages in the session's transaction, without committing.

    Returns how many messages of each channel it handled. Raises SQLAlchemy errors.
    """
    stored: Counter[str] = Counter()
    if not batch:
        return stored
    device_ids = sorted({a.device for a in batch})
    session.execute(
        idempotent_insert(session, _DEVICES).on_conflict_do_nothing(index_elements=["id"]),
        [{"id": d, "first_seen": now, "last_seen": now} for d in device_ids],
    )
    detections: dict[str, dict[str, Any]] = {}
    health: dict[str, dict[str, Any]] = {}
    events: dict[str, dict[str, Any]] = {}
    for item in batch:
        msg = item.message
        stored[item.channel.value] += 1
        if isinstance(msg, State):
            # applied in arrival order: the Last Will's `ts` is from when the agent connected
            session.execute(
                update(_DEVICES)
                .where(_DEVICES.c.id == msg.device)
                .values(**_state_values(msg, now))
            )
        elif isinstance(msg, DetectionBatch):
            detections.update((row["id"], row) for row in _detection_rows(msg, item.received))
        elif isinstance(msg, Health):
            health[msg.id] = {
                "msg_id": msg.id,
                "device": msg.device,
                "ts": msg.ts,
                "payload": msg.model_dump(mode="json"),
                "received": item.received,
            }
        elif isinstance(msg, Event | Ack):
            events[msg.id] = _event_row(msg, item.received)
    for table, rows, key in (
        (_DETECTIONS, detections, "id"),
        (_HEALTH, health, "msg_id"),
        (_EVENTS, events, "id"),
    ):
        if rows:
            stmt = idempotent_insert(session, table).on_conflict_do_nothing(index_elements=[key])
            session.execute(stmt, list(rows.values()))
    session.execute(update(_DEVICES).where(_DEVICES.c.id.in_(device_ids)).values(last_seen=now))
    return stored
