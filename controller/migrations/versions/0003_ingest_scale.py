"""Ingest at scale: latest health per device, per-minute health rollups, retention indexes, and
on PostgreSQL detections partitioned by day.

On PostgreSQL the detections table becomes `PARTITION BY RANGE (ts)` with a primary key of
(id, ts) (a partitioned table's unique keys must hold its partition key; a detection's ts never
changes, so (id, ts) dedupes redeliveries exactly as id did). Its partitions live in their own
schema, `detection_partitions`, so they never show up as tables the models lack. This revision
makes only the DEFAULT partition; controller.mqtt.retention creates the daily ones (moving rows
out of the default) and drops expired ones.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PARTITION_SCHEMA = "detection_partitions"
_COLUMNS = (
    "id, device, camera, track_id, event, label, score, x1, y1, x2, y2, ts, model, runtime, "
    "snapshot, received"
)
_INDEXES = (
    ("ix_detections_ts", "ts"),
    ("ix_detections_device_ts", "device, ts"),
    ("ix_detections_label_ts", "label, ts"),
)


def _detections_table(name: str, primary_key: str, tail: str) -> str:
    return f"""
        CREATE TABLE {name} (
            id VARCHAR(64) NOT NULL,
            device VARCHAR(64) NOT NULL,
            camera VARCHAR(64) NOT NULL,
            track_id INTEGER,
            event VARCHAR(8) DEFAULT 'update' NOT NULL,
            label VARCHAR(256) NOT NULL,
            score FLOAT NOT NULL,
            x1 FLOAT NOT NULL, y1 FLOAT NOT NULL, x2 FLOAT NOT NULL, y2 FLOAT NOT NULL,
            ts FLOAT NOT NULL,
            model VARCHAR(256) NOT NULL,
            runtime VARCHAR(256) NOT NULL,
            snapshot VARCHAR(256),
            received FLOAT NOT NULL,
            CONSTRAINT pk_detections PRIMARY KEY ({primary_key}),
            CONSTRAINT fk_detections_device_devices FOREIGN KEY (device) REFERENCES devices (id)
        ) {tail}"""


def _swap_detections(primary_key: str, tail: str) -> None:
    """Rebuild detections with another key and layout, keeping every row."""
    op.execute("ALTER TABLE detections RENAME TO detections_old")
    op.execute("ALTER TABLE detections_old RENAME CONSTRAINT pk_detections TO pk_detections_old")
    op.execute(
        "ALTER TABLE detections_old RENAME CONSTRAINT fk_detections_device_devices "
        "TO fk_detections_old_device_devices"
    )
    for name, _cols in _INDEXES:
        op.execute(f"DROP INDEX IF EXISTS {name}")
    op.execute(_detections_table("detections", primary_key, tail))
    if tail:
        op.execute(f"CREATE SCHEMA IF NOT EXISTS {PARTITION_SCHEMA}")
        op.execute(
            f"CREATE TABLE {PARTITION_SCHEMA}.detections_default PARTITION OF detections DEFAULT"
        )
    op.execute(
        f"INSERT INTO detections ({_COLUMNS}) SELECT {_COLUMNS} FROM detections_old "  # noqa: S608
        "ON CONFLICT DO NOTHING"
    )
    op.execute("DROP TABLE detections_old")
    for name, cols in _INDEXES:
        op.execute(f"CREATE INDEX {name} ON detections ({cols})")


def upgrade() -> None:
    op.create_table(
        "device_health",
        sa.Column("device", sa.String(64), nullable=False),
        sa.Column("msg_id", sa.String(64), nullable=False),
        sa.Column("ts", sa.Float(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("received", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["device"], ["devices.id"], name="fk_device_health_device_devices"),
        sa.PrimaryKeyConstraint("device", name="pk_device_health"),
    )
    op.create_table(
        "health_rollups",
        sa.Column("device", sa.String(64), nullable=False),
        sa.Column("minute", sa.BigInteger(), nullable=False),
        sa.Column("samples", sa.Integer(), nullable=False),
        sa.Column("cpu_sum", sa.Float(), nullable=False),
        sa.Column("cpu_max", sa.Float(), nullable=False),
        sa.Column("temp_max", sa.Float(), nullable=True),
        sa.Column("fps_in_sum", sa.Float(), nullable=False),
        sa.Column("fps_processed_sum", sa.Float(), nullable=False),
        sa.Column("inference_ms_max", sa.Float(), nullable=False),
        sa.Column("outbox_depth_max", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["device"], ["devices.id"], name="fk_health_rollups_device_devices"
        ),
        sa.PrimaryKeyConstraint("device", "minute", name="pk_health_rollups"),
    )
    op.create_index("ix_health_rollups_minute", "health_rollups", ["minute"])
    op.create_index("ix_health_ts", "health", ["ts"])
    op.create_index("ix_events_kind_ts", "events", ["kind", "ts"])
    if op.get_bind().dialect.name == "postgresql":
        _swap_detections("id, ts", "PARTITION BY RANGE (ts)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _swap_detections("id", "")
        op.execute(f"DROP SCHEMA IF EXISTS {PARTITION_SCHEMA} CASCADE")
    op.drop_index("ix_events_kind_ts", table_name="events")
    op.drop_index("ix_health_ts", table_name="health")
    op.drop_index("ix_health_rollups_minute", table_name="health_rollups")
    op.drop_table("health_rollups")
    op.drop_table("device_health")
