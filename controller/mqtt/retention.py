"""Retention of what the ingest stores: detections, health, health rollups and events older
than the retention go; on PostgreSQL detections live in daily partitions, made ahead of the data
and dropped whole when they expire.

`apply_retention` is what a timed job calls (one replica at a time: the scheduler's leader);
it is safe to run on several replicas at once anyway, each step being idempotent and
PostgreSQL's partition changes serialised by an advisory lock. On SQLite rows are deleted in
bounded batches, each its own transaction, so the ingest's writes interleave with them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, cast

from sqlalchemy import Table, delete, select, text, tuple_
from sqlalchemy.orm import Session, sessionmaker

from controller.db import DetectionRow, EventRow, HealthRollup, HealthRow

log = logging.getLogger(__name__)

PARTITION_SCHEMA = "detection_partitions"
_PARTITION_PREFIX = "detections_p"
# any fixed number, apart from the migration lock in controller.db
_PG_PARTITION_LOCK = 0x6564676570
DAY_S = 86_400
DELETE_BATCH = 5_000


@dataclass
class RetentionReport:
    """What one pass removed, per table, and which partitions it dropped."""

    cutoff: float
    deleted: dict[str, int] = field(default_factory=dict)
    dropped_partitions: list[str] = field(default_factory=list)
    created_partitions: list[str] = field(default_factory=list)


def _day_start(ts: float) -> datetime:
    day = datetime.fromtimestamp(ts, tz=timezone.utc)
    return day.replace(hour=0, minute=0, second=0, microsecond=0)


def partition_name(day: datetime) -> str:
    return f"{_PARTITION_PREFIX}{day:%Y%m%d}"


def _is_postgresql(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _existing_partitions(session: Session) -> dict[str, float]:
    """Daily partitions of detections: name -> upper bound (unix seconds, exclusive)."""
    rows = session.execute(
        text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE i.inhparent = 'detections'::regclass AND n.nspname = :schema "
            "AND c.relname LIKE :prefix"
        ),
        {"schema": PARTITION_SCHEMA, "prefix": f"{_PARTITION_PREFIX}%"},
    ).scalars()
    bounds = {}
    for name in rows:
        day = datetime.strptime(name[len(_PARTITION_PREFIX) :], "%Y%m%d").replace(
            tzinfo=timezone.utc
        )
        bounds[name] = (day + timedelta(days=1)).timestamp()
    return bounds


def ensure_partitions(session: Session, now: float, days_ahead: int) -> list[str]:
    """PostgreSQL: make the daily detection partitions from today to `days_ahead` days on.

    Rows already sitting in the default partition for such a day move into the new partition
    first, so attaching it never fails. Returns the names created; does nothing on SQLite.
    Raises SQLAlchemy errors.
    """
    if not _is_postgresql(session):
        return []
    session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_PARTITION_LOCK})
    existing = _existing_partitions(session)
    created = []
    today = _day_start(now)
    for offset in range(days_ahead + 1):
        day = today + timedelta(days=offset)
        name = partition_name(day)
        if name in existing:
            continue
        low, high = day.timestamp(), (day + timedelta(days=1)).timestamp()
        qualified = f"{PARTITION_SCHEMA}.{name}"
        session.execute(text(f"CREATE TABLE {qualified} (LIKE detections INCLUDING DEFAULTS)"))
        session.execute(
            text(
                f"WITH moved AS (DELETE FROM {PARTITION_SCHEMA}.detections_default "  # noqa: S608
                "WHERE ts >= :low AND ts < :high RETURNING *) "
                f"INSERT INTO {qualified} SELECT * FROM moved"
            ),
            {"low": low, "high": high},
        )
        session.execute(
            text(
                f"ALTER TABLE detections ATTACH PARTITION {qualified} "
                f"FOR VALUES FROM ({low!r}) TO ({high!r})"
            )
        )
        created.append(name)
    if created:
        log.info("event=partitions_created names=%s", ",".join(created))
    return created


def _drop_expired_partitions(session: Session, cutoff: float) -> list[str]:
    session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_PARTITION_LOCK})
    dropped = []
    for name, high in sorted(_existing_partitions(session).items()):
        if high <= cutoff:
            session.execute(text(f"DROP TABLE {PARTITION_SCHEMA}.{name}"))
            dropped.append(name)
    return dropped


def _delete_older(
    sessions: sessionmaker[Session], table: Table, column: str, cutoff: float, batch: int
) -> int:
    """Delete rows with `column < cutoff` in transactions of at most `batch` rows."""
    keys = list(table.primary_key.columns)
    key = keys[0] if len(keys) == 1 else tuple_(*keys)
    total = 0
    while True:
        with sessions() as session, session.begin():
            doomed = select(*keys).where(table.c[column] < cutoff).limit(batch)
            result = session.execute(delete(table).where(key.in_(doomed)))
            count = cast(Any, result).rowcount or 0
        total += count
        if count < batch:
            return total


def apply_retention(
    sessions: sessionmaker[Session],
    retention_days: float,
    *,
    days_ahead: int = 7,
    clock: Callable[[], float] = time.time,
    batch: int = DELETE_BATCH,
) -> RetentionReport:
    """Remove what is older than `retention_days`; on PostgreSQL also keep partitions ahead.

    Detections go by their `ts`, health and events by theirs, rollups by their minute.
    Raises SQLAlchemy errors; what was removed before an error stays removed.
    """
    now = clock()
    cutoff = now - retention_days * DAY_S
    report = RetentionReport(cutoff=cutoff)
    with sessions() as session, session.begin():
        postgresql = _is_postgresql(session)
        if postgresql:
            report.created_partitions = ensure_partitions(session, now, days_ahead)
            report.dropped_partitions = _drop_expired_partitions(session, cutoff)
    tables: list[tuple[str, Table, str, float]] = [
        ("detections", cast(Table, DetectionRow.__table__), "ts", cutoff),
        ("health", cast(Table, HealthRow.__table__), "ts", cutoff),
        ("events", cast(Table, EventRow.__table__), "ts", cutoff),
        ("health_rollups", cast(Table, HealthRollup.__table__), "minute", cutoff // 60),
    ]
    for name, table, column, bound in tables:
        # on PostgreSQL this reaches only the rows of partitions not yet dropped (the default)
        report.deleted[name] = _delete_older(sessions, table, column, bound, batch)
    log.info(
        "event=retention_applied cutoff=%.0f deleted=%s dropped_partitions=%d",
        cutoff,
        ",".join(f"{k}:{v}" for k, v in report.deleted.items()),
        len(report.dropped_partitions),
    )
    return report
