"""Read side of rollouts: a rollout with its per-wave progress, and its timeline."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from controller.db import Bundle
from controller.rollouts.models import RolloutDevice, RolloutEventRow, RolloutRow
from controller.rollouts.states import UnknownRollout


@dataclass(frozen=True)
class WaveView:
    index: int
    total: int
    counts: dict[str, int]


@dataclass(frozen=True)
class TimelineEntry:
    ts: float
    state: str
    reason: str
    data: dict[str, Any]


@dataclass(frozen=True)
class RolloutView:
    id: str
    name: str
    bundle: str
    bundle_ref: str
    state: str
    reason: str
    wave: int
    selector: dict[str, Any]
    spec: dict[str, Any]
    start_at: float | None
    created: float
    updated: float
    waves: list[WaveView] = field(default_factory=list)


@dataclass(frozen=True)
class MemberView:
    device: str
    wave: int
    state: str
    previous: str | None
    cmd_id: str | None
    offered_at: float | None
    finished_at: float | None
    reason: str


def _waves(session: Session, rollout_id: str) -> list[WaveView]:
    rows = session.execute(
        select(RolloutDevice.wave, RolloutDevice.state, func.count())
        .where(RolloutDevice.rollout == rollout_id)
        .group_by(RolloutDevice.wave, RolloutDevice.state)
    )
    waves: dict[int, dict[str, int]] = {}
    for wave, state, count in rows:
        waves.setdefault(int(wave), {})[str(state)] = int(count)
    return [WaveView(w, sum(c.values()), c) for w, c in sorted(waves.items())]


def _view(session: Session, row: RolloutRow) -> RolloutView:
    bundle = session.get(Bundle, row.bundle)
    return RolloutView(
        id=row.id,
        name=row.name,
        bundle=row.bundle,
        bundle_ref=f"{bundle.name}@{bundle.version}" if bundle else row.bundle[:12],
        state=row.state,
        reason=row.reason,
        wave=row.wave,
        selector=row.selector,
        spec=row.spec,
        start_at=row.start_at,
        created=row.created,
        updated=row.updated,
        waves=_waves(session, row.id),
    )


def get_rollout(session: Session, rollout_id: str) -> RolloutView:
    """Raises UnknownRollout."""
    row = session.get(RolloutRow, rollout_id)
    if row is None:
        raise UnknownRollout(f"no rollout {rollout_id!r}")
    return _view(session, row)


def list_rollouts(session: Session, limit: int = 100) -> list[RolloutView]:
    rows = session.scalars(select(RolloutRow).order_by(RolloutRow.created.desc()).limit(limit))
    return [_view(session, row) for row in rows]


def timeline(session: Session, rollout_id: str) -> list[TimelineEntry]:
    rows = session.scalars(
        select(RolloutEventRow)
        .where(RolloutEventRow.rollout == rollout_id)
        .order_by(RolloutEventRow.ts, RolloutEventRow.id)
    )
    return [TimelineEntry(r.ts, r.state, r.reason, r.data) for r in rows]


def members(session: Session, rollout_id: str) -> list[MemberView]:
    rows = session.scalars(
        select(RolloutDevice)
        .where(RolloutDevice.rollout == rollout_id)
        .order_by(RolloutDevice.wave, RolloutDevice.position)
    )
    return [
        MemberView(
            r.device, r.wave, r.state, r.previous, r.cmd_id, r.offered_at, r.finished_at, r.reason
        )
        for r in rows
    ]
