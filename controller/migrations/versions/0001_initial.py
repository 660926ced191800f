"""Initial schema: devices, bundles, deployments, detections, health, events.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _device_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["device"], ["devices.id"], name=op.f(f"fk_{table}_device_devices")
    )


def upgrade() -> None:
    op.create_table(
        "devices",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("online", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("profile", sa.String(256), nullable=False),
        sa.Column("agent_version", sa.String(256), nullable=False),
        sa.Column("runtimes", sa.JSON(), nullable=False),
        sa.Column("cameras", sa.JSON(), nullable=False),
        sa.Column("active_name", sa.String(64), nullable=True),
        sa.Column("active_version", sa.Integer(), nullable=True),
        sa.Column("active_digest", sa.String(64), nullable=True),
        sa.Column("active_runtime", sa.String(64), nullable=True),
        sa.Column("active_reason", sa.Text(), nullable=True),
        sa.Column("first_seen", sa.Float(), nullable=False),
        sa.Column("last_seen", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_devices")),
    )
    op.create_index("ix_devices_online", "devices", ["online"])

    op.create_table(
        "bundles",
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("chunk_size", sa.Integer(), nullable=False),
        sa.Column("manifest", sa.JSON(), nullable=False),
        sa.Column("path", sa.String(512), nullable=False),
        sa.Column("created", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("digest", name=op.f("pk_bundles")),
    )
    op.create_index("ix_bundles_name_version", "bundles", ["name", "version"])

    op.create_table(
        "deployments",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("device", sa.String(64), nullable=False),
        sa.Column("bundle", sa.String(64), nullable=False),
        sa.Column("cmd_id", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created", sa.Float(), nullable=False),
        sa.Column("updated", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["bundle"], ["bundles.digest"], name=op.f("fk_deployments_bundle_bundles")
        ),
        _device_fk("deployments"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deployments")),
        sa.UniqueConstraint("cmd_id", name=op.f("uq_deployments_cmd_id")),
    )
    op.create_index("ix_deployments_bundle_device", "deployments", ["bundle", "device"])
    op.create_index("ix_deployments_created", "deployments", ["created"])
    op.create_index("ix_deployments_device_created", "deployments", ["device", "created"])

    op.create_table(
        "detections",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("device", sa.String(64), nullable=False),
        sa.Column("camera", sa.String(64), nullable=False),
        sa.Column("track_id", sa.Integer(), nullable=True),
        sa.Column("label", sa.String(256), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("x1", sa.Float(), nullable=False),
        sa.Column("y1", sa.Float(), nullable=False),
        sa.Column("x2", sa.Float(), nullable=False),
        sa.Column("y2", sa.Float(), nullable=False),
        sa.Column("ts", sa.Float(), nullable=False),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("runtime", sa.String(256), nullable=False),
        sa.Column("snapshot", sa.String(256), nullable=True),
        sa.Column("received", sa.Float(), nullable=False),
        _device_fk("detections"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_detections")),
    )
    op.create_index("ix_detections_device_ts", "detections", ["device", "ts"])
    op.create_index("ix_detections_label_ts", "detections", ["label", "ts"])
    op.create_index("ix_detections_ts", "detections", ["ts"])

    op.create_table(
        "health",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("msg_id", sa.String(64), nullable=False),
        sa.Column("device", sa.String(64), nullable=False),
        sa.Column("ts", sa.Float(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("received", sa.Float(), nullable=False),
        _device_fk("health"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_health")),
        sa.UniqueConstraint("msg_id", name=op.f("uq_health_msg_id")),
    )
    op.create_index("ix_health_device_ts", "health", ["device", "ts"])

    op.create_table(
        "events",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("device", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("level", sa.String(16), nullable=False),
        sa.Column("bundle", sa.String(64), nullable=True),
        sa.Column("cmd_id", sa.String(256), nullable=True),
        sa.Column("reason", sa.String(256), nullable=True),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("ts", sa.Float(), nullable=False),
        sa.Column("received", sa.Float(), nullable=False),
        _device_fk("events"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
    )
    op.create_index("ix_events_device_ts", "events", ["device", "ts"])
    op.create_index("ix_events_ts", "events", ["ts"])


def downgrade() -> None:
    for table in ("events", "health", "detections", "deployments", "bundles", "devices"):
        op.drop_table(table)
