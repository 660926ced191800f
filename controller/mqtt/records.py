"""Decoded agent messages turned into database rows, idempotent on message and detection ids.

Health is kept three ways, so none of it is shed silently: the newest sample of each device
whole (`device_health`), every sample folded into its device's minute (`health_rollups`), and
one whole sample per device per `health_history_s` as history (`health`); the samples not kept
as history are counted as `health_downsampled`.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, cast

from sqlalchemy import Table, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from controller.db import (
    Deployment,
    DetectionRow,
    Device,
    EventRow,
    HealthRow,
    IngestJournalPosition,
)
from protocol.events import DeviceStatus, EventLevel
from protocol.messages import Ack, AgentMessage, DetectionBatch, Event, Health, State
from protocol.topics import Channel

_DEVICES = cast(Table, Device.__table__)
_DETECTIONS = cast(Table, DetectionRow.__table__)
_HEALTH = cast(Table, HealthRow.__table__)
_EVENTS = cast(Table, EventRow.__table__)
_JOURNAL = cast(Table, IngestJournalPosition.__table__)
LAST_SEEN_RESOLUTION_S = 5.0
"""`devices.last_seen` is rewritten at most this often per device: at 10,000 devices a write
per message would be most of the ingest's work."""

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
        declared_tags=sorted(set(state.tags)),
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
            kind=msg.kind.value,
            level=msg.level.value,
            bundle=msg.bundle,
            reason=msg.reason,
            message=msg.message,
        )
    return row


class HealthSampler:
    """Decides which health samples are kept whole as history: the first to arrive of each
    device in each interval (aligned to the epoch). The last few intervals are remembered, as
    sessions deliver QoS 0 samples slightly out of order."""

    REMEMBERED = 8

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._kept: dict[str, list[int]] = {}

    def keep(self, device: str, ts: float) -> bool:
        if self.interval_s <= 0:
            return True
        bucket = int(ts // self.interval_s)
        kept = self._kept.setdefault(device, [])
        if bucket in kept:
            return False
        kept.append(bucket)
        if len(kept) > self.REMEMBERED:
            kept.remove(min(kept))
        return True

    def forget(self, devices: Sequence[str]) -> None:
        """After a failed commit: the samples chosen were not stored."""
        for device in devices:
            self._kept.pop(device, None)


@dataclass
class WriteState:
    """What the writer remembers between batches (one per writer thread)."""

    sampler: HealthSampler
    last_seen: dict[str, float] = field(default_factory=dict)
    known_devices: set[str] = field(default_factory=set)

    def forget(self, devices: Sequence[str]) -> None:
        """After a failed commit: nothing this batch remembered was stored."""
        self.sampler.forget(devices)
        for device in devices:
            self.last_seen.pop(device, None)
            self.known_devices.discard(device)


_ARRAY_TYPES: dict[type, tuple[Any, str]] = {
    str: (str, "text"),
    int: (int, "bigint"),
    float: (float, "float8"),
}
"""Python types a column may have for the one-statement PostgreSQL insert: how its values are
made uniform (an array holds one type: a float column may get an int from JSON) and the
array's type. Unbounded on purpose: an explicit cast to varchar(n) would cut a long value
silently, while storing text into a varchar(n) column refuses it, as a plain INSERT does."""


@functools.lru_cache(maxsize=64)
def _unnest_insert(
    table: Table, columns: tuple[str, ...], key: tuple[str, ...]
) -> tuple[str, tuple[Any, ...]] | None:
    """`INSERT … SELECT FROM unnest(one array per column)` for PostgreSQL and each column's
    value maker, or None when a column's type has no plain array form here."""
    casts, makers = [], []
    for name in columns:
        try:
            kind = table.c[name].type.python_type
        except NotImplementedError:  # a type without a Python equivalent
            return None
        if kind not in _ARRAY_TYPES:
            return None
        make, array_type = _ARRAY_TYPES[kind]
        casts.append(f"%s::{array_type}[]")
        makers.append(make)
    sql = (
        f"INSERT INTO {table.name} ({', '.join(columns)}) "  # noqa: S608 - names from our models
        f"SELECT * FROM unnest({', '.join(casts)}) "
        f"ON CONFLICT ({', '.join(key)}) DO NOTHING"
    )
    return sql, tuple(makers)


def _insert_ignoring_duplicates(
    session: Session, table: Table, rows: Sequence[dict[str, Any]], key: Sequence[str]
) -> None:
    """Most of the ingest's rows go through here, straight to the driver: SQLAlchemy's per-row
    parameter processing cost more than the database's own work.

    PostgreSQL gets one statement per batch with one array per column: an executemany is one
    statement per row there (pipelined, but each still parsed, planned and executed on its
    own), which cost the server and the driver more than the rows. SQLite takes an
    executemany, a loop in C over one prepared statement."""
    columns = list(rows[0])
    dialect = session.get_bind().dialect
    if dialect.name == "postgresql":
        unnest = _unnest_insert(table, tuple(columns), tuple(key))
        if unnest is not None:
            sql, makers = unnest
            arrays = tuple(
                [None if r[name] is None else make(r[name]) for r in rows]
                for name, make in zip(columns, makers, strict=True)
            )
            session.connection().exec_driver_sql(sql, arrays)
            return
    mark = "?" if dialect.paramstyle == "qmark" else "%s"
    sql = (
        f"INSERT INTO {table.name} ({', '.join(columns)}) "  # noqa: S608 - names from our models
        f"VALUES ({', '.join([mark] * len(columns))}) "
        f"ON CONFLICT ({', '.join(key)}) DO NOTHING"
    )
    # rows hold plain values (enums as their values): one C-level getter per row
    values = itemgetter(*columns)
    session.connection().exec_driver_sql(sql, [values(row) for row in rows])


def drop_misaddressed(session: Session, batch: Sequence[Accepted]) -> tuple[list[Accepted], int]:
    """Events and acks that name a deployment command sent to another device are dropped.

    Returns the messages to keep and how many were dropped. Raises SQLAlchemy errors.
    """
    cmd_ids = {
        item.message.cmd_id
        for item in batch
        if isinstance(item.message, Event | Ack) and item.message.cmd_id
    }
    if not cmd_ids:
        return list(batch), 0
    rows = session.execute(
        select(Deployment.cmd_id, Deployment.device).where(Deployment.cmd_id.in_(cmd_ids))
    )
    owners: dict[str, str] = {cmd_id: device for cmd_id, device in rows}
    kept = []
    for item in batch:
        msg = item.message
        if isinstance(msg, Event | Ack) and msg.cmd_id:
            owner = owners.get(msg.cmd_id)
            if owner is not None and owner != msg.device:
                continue
        kept.append(item)
    return kept, len(batch) - len(kept)


def _rollup_key(msg: Health) -> tuple[str, int]:
    return msg.device, int(msg.ts // 60)


def _rollup_row(msg: Health) -> dict[str, Any]:
    temps = [*msg.temperatures_c.values(), *(a.temperature_c for a in msg.accelerators)]
    known = [t for t in temps if t is not None]
    device, minute = _rollup_key(msg)
    return {
        "device": device,
        "minute": minute,
        "samples": 1,
        "cpu_sum": msg.cpu_percent or 0.0,
        "cpu_max": msg.cpu_percent or 0.0,
        "temp_max": max(known) if known else None,
        "fps_in_sum": sum(c.fps_in for c in msg.cameras),
        "fps_processed_sum": sum(c.fps_processed for c in msg.cameras),
        "inference_ms_max": max((c.inference_ms for c in msg.cameras), default=0.0),
        "outbox_depth_max": msg.outbox_depth,
    }


def _fold(into: dict[str, Any], row: dict[str, Any]) -> None:
    for key in ("samples", "cpu_sum", "fps_in_sum", "fps_processed_sum"):
        into[key] += row[key]
    for key in ("cpu_max", "inference_ms_max", "outbox_depth_max"):
        into[key] = max(into[key], row[key])
    temps = [t for t in (into["temp_max"], row["temp_max"]) if t is not None]
    into["temp_max"] = max(temps) if temps else None


_ROLLUP_COLUMNS = (
    "device",
    "minute",
    "samples",
    "cpu_sum",
    "cpu_max",
    "temp_max",
    "fps_in_sum",
    "fps_processed_sum",
    "inference_ms_max",
    "outbox_depth_max",
)


@dataclass(frozen=True)
class _HealthSql:
    latest: str
    rollup: str
    history: str


@functools.cache
def _health_sql(dialect: str) -> _HealthSql:
    """Health's upserts as driver SQL (SQLite and PostgreSQL share the ON CONFLICT form)."""
    pg = dialect == "postgresql"
    m = "%s" if pg else "?"
    doc = f"CAST({m} AS JSON)" if pg else m
    larger = "GREATEST" if pg else "MAX"  # SQLite's two-argument max() is scalar

    def top(c: str) -> str:
        # NULL only when both are: SQLite's max() is NULL when either is
        return (
            f"{c} = {larger}(COALESCE(health_rollups.{c}, excluded.{c}), "
            f"COALESCE(excluded.{c}, health_rollups.{c}))"
        )

    summed = ("samples", "cpu_sum", "fps_in_sum", "fps_processed_sum")
    topped = ("cpu_max", "temp_max", "inference_ms_max", "outbox_depth_max")
    return _HealthSql(
        latest=(
            "INSERT INTO device_health (device, msg_id, ts, payload, received) "  # noqa: S608
            f"VALUES ({m}, {m}, {m}, {doc}, {m}) ON CONFLICT (device) DO UPDATE SET "
            "msg_id = excluded.msg_id, ts = excluded.ts, payload = excluded.payload, "
            "received = excluded.received WHERE excluded.ts >= device_health.ts"
        ),
        rollup=(
            f"INSERT INTO health_rollups ({', '.join(_ROLLUP_COLUMNS)}) "  # noqa: S608
            f"VALUES ({', '.join([m] * len(_ROLLUP_COLUMNS))}) "
            "ON CONFLICT (device, minute) DO UPDATE SET "
            + ", ".join(f"{c} = health_rollups.{c} + excluded.{c}" for c in summed)
            + ", "
            + ", ".join(top(c) for c in topped)
        ),
        history=(
            "INSERT INTO health (msg_id, device, ts, payload, received) "  # noqa: S608
            f"VALUES ({m}, {m}, {m}, {doc}, {m}) ON CONFLICT (msg_id) DO NOTHING"
        ),
    )


def _write_health(
    session: Session, healths: Sequence[tuple[Health, float]], state: WriteState
) -> int:
    """Latest, rollups and sampled history; returns how many samples were not kept whole."""
    latest: dict[str, dict[str, Any]] = {}
    rollups: dict[tuple[str, int], dict[str, Any]] = {}
    history: list[dict[str, Any]] = []
    for msg, received in healths:
        whole = {
            "msg_id": msg.id,
            "device": msg.device,
            "ts": msg.ts,
            "payload": msg.model_dump(mode="json"),
            "received": received,
        }
        if msg.device not in latest or latest[msg.device]["ts"] <= msg.ts:
            latest[msg.device] = whole
        row = _rollup_row(msg)
        key = _rollup_key(msg)
        if key in rollups:
            _fold(rollups[key], row)
        else:
            rollups[key] = row
        if state.sampler.keep(msg.device, msg.ts):
            history.append(whole)
    sql = _health_sql(session.get_bind().dialect.name)
    conn = session.connection()
    conn.exec_driver_sql(
        sql.latest,
        [
            (d, row["msg_id"], row["ts"], json.dumps(row["payload"]), row["received"])
            for d, row in sorted(latest.items())
        ],
    )
    conn.exec_driver_sql(
        sql.rollup, [tuple(rollups[k][c] for c in _ROLLUP_COLUMNS) for k in sorted(rollups)]
    )
    if history:
        conn.exec_driver_sql(
            sql.history,
            [
                (r["msg_id"], r["device"], r["ts"], json.dumps(r["payload"]), r["received"])
                for r in history
            ],
        )
    return len(healths) - len(history)


def _touch_devices(session: Session, devices: Sequence[str], now: float, state: WriteState) -> None:
    """Refresh last_seen of the devices whose value is older than the resolution."""
    stale = [d for d in devices if now - state.last_seen.get(d, 0.0) >= LAST_SEEN_RESOLUTION_S]
    if not stale:
        return
    if session.get_bind().dialect.name == "postgresql":
        # rows locked in one order, so replicas writing the same devices cannot deadlock; and
        # NO KEY UPDATE, which the key-share locks that this batch's foreign keys (detections,
        # health) took on other replicas' devices do not block: FOR UPDATE deadlocked there
        session.execute(
            text(
                "UPDATE devices SET last_seen = :now FROM (SELECT id FROM devices "
                "WHERE id = ANY(:ids) ORDER BY id FOR NO KEY UPDATE) AS locked "
                "WHERE devices.id = locked.id"
            ),
            {"now": now, "ids": stale},
        )
    else:
        session.execute(update(_DEVICES).where(_DEVICES.c.id.in_(stale)).values(last_seen=now))
    for device in stale:
        state.last_seen[device] = now


def write_batch(
    session: Session, batch: Sequence[Accepted], now: float, state: WriteState
) -> Counter[str]:
    """Store decoded messages in the session's transaction, without committing.

    Returns how many messages of each channel it handled, plus `health_downsampled` (health
    samples folded into the latest and the rollups but not kept whole). Raises SQLAlchemy errors.
    """
    stored: Counter[str] = Counter()
    if not batch:
        return stored
    device_ids = sorted({a.device for a in batch})
    # devices are never deleted, so one known to exist needs no insert
    new_devices = [d for d in device_ids if d not in state.known_devices]
    if new_devices:
        session.execute(
            idempotent_insert(session, _DEVICES).on_conflict_do_nothing(index_elements=["id"]),
            [{"id": d, "first_seen": now, "last_seen": now} for d in new_devices],
        )
        state.known_devices.update(new_devices)
    detections: dict[str, dict[str, Any]] = {}
    healths: list[tuple[Health, float]] = []
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
            healths.append((msg, item.received))
        elif isinstance(msg, Event | Ack):
            events[msg.id] = _event_row(msg, item.received)
    if detections:
        # on PostgreSQL detections are partitioned by ts, so their unique key holds ts too
        key = ["id", "ts"] if session.get_bind().dialect.name == "postgresql" else ["id"]
        _insert_ignoring_duplicates(
            session, _DETECTIONS, [detections[k] for k in sorted(detections)], key
        )
    if events:
        _insert_ignoring_duplicates(session, _EVENTS, list(events.values()), ["id"])
    if healths:
        downsampled = _write_health(session, healths, state)
        if downsampled:
            stored["health_downsampled"] += downsampled
    _touch_devices(session, device_ids, now, state)
    return stored


def load_journal_position(session: Session, journal: str) -> tuple[int, int] | None:
    """(segment, offset) where journal `journal`'s writer stands; None when it has not begun."""
    row = session.execute(
        select(_JOURNAL.c.segment, _JOURNAL.c.offset).where(_JOURNAL.c.journal == journal)
    ).first()
    return (int(row[0]), int(row[1])) if row is not None else None


def save_journal_position(
    session: Session, journal: str, segment: int, offset: int, now: float
) -> None:
    """Record, in the session's transaction, that the journal is stored up to (segment, offset)."""
    values = {"journal": journal, "segment": segment, "offset": offset, "updated": now}
    session.execute(
        idempotent_insert(session, _JOURNAL)
        .values(values)
        .on_conflict_do_update(
            index_elements=["journal"],
            set_={"segment": segment, "offset": offset, "updated": now},
        )
    )
