"""Tables of the rollouts room: inventory (tags, groups, decommission), each device's target,
rollouts with their members and timeline, and the scheduler's job store.

Times are unix seconds (float), like the rest of the controller's schema.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    Unicode,
)
from sqlalchemy.orm import Mapped, mapped_column

from controller.db import Base

SCHEDULER_JOBS_TABLE = "scheduler_jobs"

# The shape APScheduler's SQLAlchemyJobStore creates; declared here (and in the migration) so the
# schema stays exactly what the migrations build, whichever process creates the table first.
scheduler_jobs = Table(
    SCHEDULER_JOBS_TABLE,
    Base.metadata,
    Column("id", Unicode(191), primary_key=True),
    Column("next_run_time", Float(25), index=True),
    Column("job_state", LargeBinary, nullable=False),
)


class DeviceInventory(Base):
    """What operators say about a device: tags, and whether it left the fleet."""

    __tablename__ = "device_inventory"

    device: Mapped[str] = mapped_column(ForeignKey("devices.id"), primary_key=True)
    tags: Mapped[list[Any]] = mapped_column(default=list)
    decommissioned: Mapped[float | None] = mapped_column(Float)


class DeviceGroup(Base):
    """A saved selector: its members are whichever devices match it now."""

    __tablename__ = "device_groups"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    selector: Mapped[dict[str, Any]] = mapped_column()
    created: Mapped[float] = mapped_column(Float)


class DeviceTarget(Base):
    """The one bundle a device should run, and the rollout (if any) that set it."""

    __tablename__ = "device_targets"

    device: Mapped[str] = mapped_column(ForeignKey("devices.id"), primary_key=True)
    bundle: Mapped[str] = mapped_column(ForeignKey("bundles.digest"))
    rollout: Mapped[str | None] = mapped_column(String(64))
    set_at: Mapped[float] = mapped_column(Float)
    # the deployment that carries this target; empty until one was sent
    cmd_id: Mapped[str | None] = mapped_column(String(64))


class RolloutRow(Base):
    __tablename__ = "rollouts"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    bundle: Mapped[str] = mapped_column(ForeignKey("bundles.digest"))
    selector: Mapped[dict[str, Any]] = mapped_column()
    spec: Mapped[dict[str, Any]] = mapped_column()
    state: Mapped[str] = mapped_column(String(24))
    wave: Mapped[int] = mapped_column(Integer, default=0)
    approved_wave: Mapped[int] = mapped_column(Integer, default=0)
    start_at: Mapped[float | None] = mapped_column(Float)
    next_offer_at: Mapped[float] = mapped_column(Float, default=0.0)
    offers: Mapped[int] = mapped_column(Integer, default=0)
    reason: Mapped[str] = mapped_column(Text, default="")
    created: Mapped[float] = mapped_column(Float)
    updated: Mapped[float] = mapped_column(Float)

    __table_args__ = (Index("ix_rollouts_state", "state"),)


class RolloutDevice(Base):
    """One device of a rollout: its wave, the bundle it ran before, and how far it got."""

    __tablename__ = "rollout_devices"

    rollout: Mapped[str] = mapped_column(ForeignKey("rollouts.id"), primary_key=True)
    device: Mapped[str] = mapped_column(ForeignKey("devices.id"), primary_key=True)
    wave: Mapped[int] = mapped_column(Integer)
    position: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    previous: Mapped[str | None] = mapped_column(String(64))
    cmd_id: Mapped[str | None] = mapped_column(String(64))
    revert_cmd: Mapped[str | None] = mapped_column(String(64))
    revert_at: Mapped[float | None] = mapped_column(Float)
    offered_at: Mapped[float | None] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)
    reason: Mapped[str] = mapped_column(Text, default="")

    __table_args__ = (Index("ix_rollout_devices_rollout_state", "rollout", "state"),)


class RolloutEventRow(Base):
    """One entry of a rollout's timeline: a transition and why."""

    __tablename__ = "rollout_timeline"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    rollout: Mapped[str] = mapped_column(ForeignKey("rollouts.id"))
    ts: Mapped[float] = mapped_column(Float)
    state: Mapped[str] = mapped_column(String(24))
    reason: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)

    __table_args__ = (Index("ix_rollout_timeline_rollout_ts", "rollout", "ts"),)
