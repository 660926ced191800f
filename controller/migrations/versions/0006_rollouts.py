"""Rollouts: device inventory and groups, device targets, rollouts with members and timeline,
and the scheduler's job store.

Revision ID: 0006
Revises: 0002
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "scheduler_jobs",
        sa.Column("id", sa.Unicode(191), nullable=False),
        sa.Column("next_run_time", sa.Float(25), nullable=True),
        sa.Column("job_state", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_scheduler_jobs"),
    )
    op.create_index("ix_scheduler_jobs_next_run_time", "scheduler_jobs", ["next_run_time"])
    op.create_table(
        "device_inventory",
        sa.Column("device", sa.String(64), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("decommissioned", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["device"], ["devices.id"], name="fk_device_inventory_device_devices"
        ),
        sa.PrimaryKeyConstraint("device", name="pk_device_inventory"),
    )
    op.create_table(
        "device_groups",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("selector", sa.JSON(), nullable=False),
        sa.Column("created", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_device_groups"),
    )
    op.create_table(
        "device_targets",
        sa.Column("device", sa.String(64), nullable=False),
        sa.Column("bundle", sa.String(64), nullable=False),
        sa.Column("rollout", sa.String(64), nullable=True),
        sa.Column("set_at", sa.Float(), nullable=False),
        sa.Column("cmd_id", sa.String(64), nullable=True),
        sa.ForeignKeyConstraint(
            ["bundle"], ["bundles.digest"], name="fk_device_targets_bundle_bundles"
        ),
        sa.ForeignKeyConstraint(
            ["device"], ["devices.id"], name="fk_device_targets_device_devices"
        ),
        sa.PrimaryKeyConstraint("device", name="pk_device_targets"),
    )
    op.create_table(
        "rollouts",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("bundle", sa.String(64), nullable=False),
        sa.Column("selector", sa.JSON(), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(24), nullable=False),
        sa.Column("wave", sa.Integer(), nullable=False),
        sa.Column("approved_wave", sa.Integer(), nullable=False),
        sa.Column("start_at", sa.Float(), nullable=True),
        sa.Column("next_offer_at", sa.Float(), nullable=False),
        sa.Column("offers", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created", sa.Float(), nullable=False),
        sa.Column("updated", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["bundle"], ["bundles.digest"], name="fk_rollouts_bundle_bundles"),
        sa.PrimaryKeyConstraint("id", name="pk_rollouts"),
    )
    op.create_index("ix_rollouts_state", "rollouts", ["state"])
    op.create_table(
        "rollout_devices",
        sa.Column("rollout", sa.String(64), nullable=False),
        sa.Column("device", sa.String(64), nullable=False),
        sa.Column("wave", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("previous", sa.String(64), nullable=True),
        sa.Column("cmd_id", sa.String(64), nullable=True),
        sa.Column("revert_cmd", sa.String(64), nullable=True),
        sa.Column("revert_at", sa.Float(), nullable=True),
        sa.Column("offered_at", sa.Float(), nullable=True),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["device"], ["devices.id"], name="fk_rollout_devices_device_devices"
        ),
        sa.ForeignKeyConstraint(
            ["rollout"], ["rollouts.id"], name="fk_rollout_devices_rollout_rollouts"
        ),
        sa.PrimaryKeyConstraint("rollout", "device", name="pk_rollout_devices"),
    )
    op.create_index("ix_rollout_devices_rollout_state", "rollout_devices", ["rollout", "state"])
    op.create_table(
        "rollout_timeline",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("rollout", sa.String(64), nullable=False),
        sa.Column("ts", sa.Float(), nullable=False),
        sa.Column("state", sa.String(24), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["rollout"], ["rollouts.id"], name="fk_rollout_timeline_rollout_rollouts"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_rollout_timeline"),
    )
    op.create_index("ix_rollout_timeline_rollout_ts", "rollout_timeline", ["rollout", "ts"])


def downgrade() -> None:
    op.drop_index("ix_rollout_timeline_rollout_ts", table_name="rollout_timeline")
    op.drop_table("rollout_timeline")
    op.drop_index("ix_rollout_devices_rollout_state", table_name="rollout_devices")
    op.drop_table("rollout_devices")
    op.drop_index("ix_rollouts_state", table_name="rollouts")
    op.drop_table("rollouts")
    op.drop_table("device_targets")
    op.drop_table("device_groups")
    op.drop_table("device_inventory")
    op.drop_index("ix_scheduler_jobs_next_run_time", table_name="scheduler_jobs")
    op.drop_table("scheduler_jobs")
