"""Retention: old detections, health, rollups and events go, recent ones stay; on PostgreSQL
detections live in daily partitions that are made ahead and dropped whole; queries the API
makes on the large tables use their indexes."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import func, select, text

from controller.db import (
    DetectionRow,
    Device,
    EventRow,
    HealthRollup,
    HealthRow,
    make_engine,
    session_factory,
    upgrade_database,
)
from controller.mqtt.retention import (
    DAY_S,
    PARTITION_SCHEMA,
    apply_retention,
    ensure_partitions,
    partition_name,
)

# a fixed "now", a year ahead: its partitions are this test's own, names predictable
NOW = 1_830_000_000.0


@pytest.fixture
def sessions(db_url):
    upgrade_database(db_url)
    engine = make_engine(db_url)
    yield session_factory(engine)
    engine.dispose()


def _fill(sessions, ages_days: list[float]) -> None:
    with sessions() as s, s.begin():
        s.add(Device(id="cam-r", first_seen=NOW, last_seen=NOW))
        s.flush()
        for age in ages_days:
            ts = NOW - age * DAY_S
            s.add(
                DetectionRow(
                    id=uuid.uuid4().hex,
                    device="cam-r",
                    camera="cam0",
                    label="face",
                    score=0.5,
                    x1=0,
                    y1=0,
                    x2=1,
                    y2=1,
                    ts=ts,
                    received=ts,
                )
            )
            s.add(
                HealthRow(msg_id=uuid.uuid4().hex, device="cam-r", ts=ts, payload={}, received=ts)
            )
            s.add(
                EventRow(
                    id=uuid.uuid4().hex, device="cam-r", kind="log", ts=ts, received=ts, message=""
                )
            )
            s.add(
                HealthRollup(
                    device="cam-r",
                    minute=int(ts // 60),
                    samples=1,
                    cpu_sum=1,
                    cpu_max=1,
                    fps_in_sum=0,
                    fps_processed_sum=0,
                    inference_ms_max=0,
                    outbox_depth_max=0,
                )
            )


def _ts(sessions, model) -> list[float]:
    column = model.minute if model is HealthRollup else model.ts
    with sessions() as s:
        return sorted(s.scalars(select(column)))


def test_what_is_older_than_the_retention_goes_in_bounded_batches(sessions):
    ages = [0.1, 1, 5, 29.5, 31, 40, 45, 50, 90, 400]
    _fill(sessions, ages)
    report = apply_retention(sessions, 30, clock=lambda: NOW, batch=2)
    kept = [NOW - a * DAY_S for a in ages if a < 30]
    for model in (DetectionRow, HealthRow, EventRow):
        assert _ts(sessions, model) == sorted(kept), model
    assert len(_ts(sessions, HealthRollup)) == len(kept)
    gone = len(ages) - len(kept)
    # (on PostgreSQL too: no daily partition was made for those days, so the rows sat in the
    # default partition, from which they are deleted)
    for name in ("detections", "health", "events", "health_rollups"):
        assert report.deleted[name] == gone, name
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Device)) == 1

    again = apply_retention(sessions, 30, clock=lambda: NOW, batch=2)
    assert sum(again.deleted.values()) == 0 and again.dropped_partitions == []


def _is_pg(sessions) -> bool:
    with sessions() as s:
        return s.get_bind().dialect.name == "postgresql"


def test_postgresql_detections_live_in_daily_partitions_dropped_whole(sessions):
    if not _is_pg(sessions):
        # SQLite has no partitions: retention deletes in batches there (test above)
        with sessions() as s:
            assert ensure_partitions(s, NOW, 3) == []
        return
    old = NOW - 40 * DAY_S
    # a row lands in the default partition first, then its day gets a partition: it moves
    _fill(sessions, [40])
    with sessions() as s, s.begin():
        created = ensure_partitions(s, old, 1)
    day = partition_name(_day(old))
    assert day in created
    with sessions() as s:
        where = s.scalar(
            text("SELECT tableoid::regclass::text FROM detections WHERE device = 'cam-r'")
        )
    assert where == f"{PARTITION_SCHEMA}.{day}"

    report = apply_retention(sessions, 30, clock=lambda: NOW)
    assert day in report.dropped_partitions
    assert _ts(sessions, DetectionRow) == []
    with sessions() as s:
        left = set(
            s.scalars(
                text(
                    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                    "WHERE i.inhparent = 'detections'::regclass"
                )
            )
        )
    assert day not in left and "detections_default" in left
    ahead = {partition_name(_day(NOW + d * DAY_S)) for d in range(8)}
    assert ahead <= left  # today's and the next seven days' partitions are ready


def _day(ts: float):
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ts, tz=timezone.utc).replace(
        hour=0, minute=0, second=0, microsecond=0
    )


API_QUERIES = {
    "detections of a device": (
        "SELECT * FROM detections WHERE device = 'cam-r' ORDER BY ts DESC LIMIT 50",
        "ix_detections_device_ts",
    ),
    "detections of a label": (
        "SELECT * FROM detections WHERE label = 'face' ORDER BY ts DESC LIMIT 50",
        "ix_detections_label_ts",
    ),
    "newest detections": ("SELECT * FROM detections ORDER BY ts DESC LIMIT 50", "ix_detections_ts"),
    "events of a kind": (
        "SELECT * FROM events WHERE kind = 'log' ORDER BY ts DESC LIMIT 50",
        "ix_events_kind_ts",
    ),
    "health of a device": (
        "SELECT * FROM health WHERE device = 'cam-r' ORDER BY ts DESC LIMIT 50",
        "ix_health_device_ts",
    ),
}


@pytest.mark.parametrize("query", sorted(API_QUERIES))
def test_the_apis_queries_on_large_tables_use_their_indexes(sessions, query):
    sql, index = API_QUERIES[query]
    with sessions() as s:
        if s.get_bind().dialect.name == "sqlite":
            plan = " ".join(str(r[-1]) for r in s.execute(text(f"EXPLAIN QUERY PLAN {sql}")))
            assert index in plan, plan
            return
        s.execute(text("SET enable_seqscan = off"))  # an empty table would be scanned anyway
        plan = " ".join(r[0] for r in s.execute(text(f"EXPLAIN {sql}")))
    # partitions carry their own copies of the parent's indexes, under their own names
    assert "Seq Scan" not in plan and "Index" in plan, plan
    assert "Sort" not in plan.split("->")[0] or "Merge Append" in plan or "Index" in plan, plan
