"""One tick of one rollout, step by step: read a snapshot of its members, follow each member's
deployment, trip thresholds, judge a settled wave (success threshold, gates), open the next
wave, offer devices at the rollout's rate, and start or finish a revert. Each step works inside
the caller's transaction; `controller.rollouts.engine` orders them and sends the commands.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from controller.db import Deployment, Device
from controller.rollouts import gates
from controller.rollouts.desired import (
    FINAL_STATUSES,
    STAGES,
    clear_target,
    set_revert_target,
    set_target,
)
from controller.rollouts.models import DeviceTarget, RolloutDevice, RolloutEventRow, RolloutRow
from controller.rollouts.spec import RolloutSpec
from controller.rollouts.states import TOUCHED_MEMBERS, MemberState, RolloutState
from protocol.events import DeploymentStatus

log = logging.getLogger(__name__)

_QUERY_CHUNK = 500


def _chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), _QUERY_CHUNK):
        yield items[i : i + _QUERY_CHUNK]


class Snapshot:
    """What one tick of one rollout reads: members, their devices and deployments."""

    def __init__(self, session: Session, rollout: RolloutRow) -> None:
        self.members = list(
            session.scalars(
                select(RolloutDevice)
                .where(RolloutDevice.rollout == rollout.id)
                .order_by(RolloutDevice.wave, RolloutDevice.position)
            )
        )
        ids = [m.device for m in self.members]
        # what a tick needs of each member's device: its running bundle and whether it is
        # online (two columns, not whole rows with their JSON, at every tick)
        self.devices: dict[str, tuple[str | None, bool]] = {}
        self.targets: dict[str, DeviceTarget] = {}
        for part in _chunks(ids):
            self.devices.update(
                (d.id, (d.active_digest, bool(d.online)))
                for d in session.execute(
                    select(Device.id, Device.active_digest, Device.online).where(
                        Device.id.in_(part)
                    )
                )
            )
            self.targets.update(
                (t.device, t)
                for t in session.scalars(select(DeviceTarget).where(DeviceTarget.device.in_(part)))
            )
        cmds = [m.cmd_id for m in self.members if m.cmd_id]
        self.deployments: dict[str, Deployment] = {}
        for part in _chunks(cmds):
            self.deployments.update(
                (d.cmd_id, d)
                for d in session.scalars(select(Deployment).where(Deployment.cmd_id.in_(part)))
            )

    def active(self, device: str) -> str | None:
        row = self.devices.get(device)
        return row[0] if row else None

    def online(self, device: str) -> bool:
        row = self.devices.get(device)
        return bool(row and row[1])


def new_member(rollout_id: str, device: str, wave: int, position: int) -> RolloutDevice:
    return RolloutDevice(
        rollout=rollout_id,
        device=device,
        wave=wave,
        position=position,
        state=MemberState.QUEUED.value,
        reason="",
    )


def add_timeline(
    session: Session,
    row: RolloutRow,
    now: float,
    reason: str,
    data: dict[str, Any] | None = None,
) -> None:
    session.add(
        RolloutEventRow(rollout=row.id, ts=now, state=row.state, reason=reason, data=data or {})
    )


def transition(
    session: Session,
    row: RolloutRow,
    to: RolloutState,
    reason: str,
    now: float,
    data: dict[str, Any] | None = None,
) -> None:
    log.info(
        "event=rollout_transition rollout=%s from=%s to=%s reason=%s",
        row.id,
        row.state,
        to.value,
        reason,
    )
    row.state, row.reason, row.updated = to.value, reason, now
    add_timeline(session, row, now, reason, data)


def _finish(member: RolloutDevice, state: MemberState, reason: str, now: float) -> None:
    member.state, member.reason, member.finished_at = state.value, reason[:1000], now


def follow(
    session: Session,
    row: RolloutRow,
    spec: RolloutSpec,
    snap: Snapshot,
    member: RolloutDevice,
    now: float,
) -> None:
    """Move one member on from what its deployment and device report."""
    state = MemberState(member.state)
    if state is MemberState.DEFERRED:
        target = snap.targets.get(member.device)
        if target is None or target.rollout != row.id:
            _finish(member, MemberState.SKIPPED, "superseded", now)
        elif snap.active(member.device) == row.bundle:
            _finish(member, MemberState.SUCCEEDED, "already_running", now)
        elif target.cmd_id is not None:
            member.state, member.cmd_id, member.offered_at = (
                MemberState.OFFERED.value,
                target.cmd_id,
                now,
            )
        return
    if state not in (MemberState.OFFERED, MemberState.REVERTING):
        return
    deployment = snap.deployments.get(member.cmd_id) if member.cmd_id else None
    if deployment is not None and deployment.status not in FINAL_STATUSES:
        stage = STAGES.get(deployment.status, "offered")
        limit = getattr(spec.timeouts, f"{stage}_s")
        if now - deployment.updated > limit:
            # the deployment is final too: no deployment stays open past its stage's timeout
            deployment.status = DeploymentStatus.FAILED.value
            deployment.reason = f"timeout:{stage}"
            deployment.updated = now
    if state is MemberState.REVERTING:
        if snap.active(member.device) == member.previous and (
            deployment is None or deployment.status in FINAL_STATUSES
        ):
            _finish(member, MemberState.REVERTED, "reverted", now)
        return
    if deployment is None:
        if member.offered_at is not None and now - member.offered_at > spec.timeouts.offered_s:
            _finish(member, MemberState.FAILED, "timeout:offered", now)
        return
    if deployment.status == DeploymentStatus.RUNNING.value:
        _finish(member, MemberState.SUCCEEDED, "running", now)
    elif deployment.status in FINAL_STATUSES:
        _finish(member, MemberState.FAILED, deployment.reason or deployment.status, now)


def _wave_counts(snap: Snapshot, wave: int) -> dict[str, int]:
    counts = dict.fromkeys((s.value for s in MemberState), 0)
    for member in snap.members:
        if member.wave == wave:
            counts[member.state] += 1
    counts["total"] = sum(1 for m in snap.members if m.wave == wave)
    return counts


def failure_tripped(
    session: Session, row: RolloutRow, spec: RolloutSpec, snap: Snapshot, now: float
) -> bool:
    counts = _wave_counts(snap, row.wave)
    failed, succeeded = counts[MemberState.FAILED.value], counts[MemberState.SUCCEEDED.value]
    limit = max(1, spec.failure_threshold.of(counts["total"]))
    if failed < limit or failed + succeeded < spec.min_finished:
        return False
    data = {"wave": row.wave, "failed": failed, "succeeded": succeeded, "limit": limit}
    _halt(session, row, spec, snap, now, "threshold:failures", data)
    return True


def _halt(
    session: Session,
    row: RolloutRow,
    spec: RolloutSpec,
    snap: Snapshot,
    now: float,
    reason: str,
    data: dict[str, Any],
) -> None:
    transition(session, row, RolloutState.HALTED, reason, now, data)
    drop_deferred(session, row, snap)
    if spec.on_failure == "revert":
        start_revert(session, row, snap, now, reason)


def drop_deferred(session: Session, row: RolloutRow, snap: Snapshot) -> None:
    """Deferred members are not offered any more: their undelivered targets go."""
    for member in snap.members:
        if member.state == MemberState.DEFERRED.value:
            target = snap.targets.get(member.device)
            if target is not None and target.rollout == row.id and target.cmd_id is None:
                clear_target(session, member.device)
            member.state, member.reason = MemberState.SKIPPED.value, "stopped"


def start_revert(
    session: Session, row: RolloutRow, snap: Snapshot, now: float, reason: str
) -> None:
    touched = 0
    for member in snap.members:
        if member.state not in {s.value for s in TOUCHED_MEMBERS}:
            continue
        touched += 1
        if member.previous is None:
            _finish(member, MemberState.REVERT_FAILED, "no_previous_bundle", now)
            continue
        member.state, member.revert_cmd, member.revert_at = MemberState.REVERTING.value, None, None
        target = set_revert_target(session, member.device, member.previous, row.id, now)
        if target is not None and snap.active(member.device) == row.bundle:
            target.cmd_id = f"rollback-{row.id}"[:64]  # a rollback command carries it, not a deploy
    transition(session, row, RolloutState.REVERTING, f"revert:{reason}", now, {"devices": touched})


def finish_revert(session: Session, row: RolloutRow, snap: Snapshot, now: float) -> None:
    if any(m.state == MemberState.REVERTING.value for m in snap.members):
        return
    counts = {
        s: sum(1 for m in snap.members if m.state == s.value)
        for s in (MemberState.REVERTED, MemberState.REVERT_FAILED)
    }
    transition(
        session,
        row,
        RolloutState.REVERTED,
        "reverted",
        now,
        {"reverted": counts[MemberState.REVERTED], "failed": counts[MemberState.REVERT_FAILED]},
    )


def join_new(
    session: Session, row: RolloutRow, snap: Snapshot, matching: Sequence[str], now: float
) -> None:
    """Devices that newly match the selector (`matching`: every device it matches now, in
    order) join the last wave."""
    known = {m.device for m in snap.members}
    fresh = [d for d in matching if d not in known]
    if not fresh:
        return
    last = max((m.wave for m in snap.members), default=0)
    position = max((m.position for m in snap.members), default=-1) + 1
    for offset, device in enumerate(fresh):
        member = new_member(row.id, device, max(last, row.wave), position + offset)
        session.add(member)
        snap.members.append(member)
        found = session.get(Device, device)
        if found is not None:
            snap.devices[device] = (found.active_digest, bool(found.online))
    add_timeline(session, row, now, "devices_joined", {"devices": fresh[:50], "count": len(fresh)})


def judge_wave(
    session: Session,
    row: RolloutRow,
    spec: RolloutSpec,
    snap: Snapshot,
    eligible: set[str],
    now: float,
) -> bool:
    """Open the next wave when this one has settled and passed; False when it stopped."""
    current = [m for m in snap.members if m.wave <= row.wave]
    unsettled = [
        m
        for m in current
        if m.state == MemberState.OFFERED.value
        or (m.state == MemberState.QUEUED.value and m.device in eligible and snap.online(m.device))
    ]
    if unsettled:
        return True
    for member in current:
        if member.state == MemberState.QUEUED.value and member.device in eligible:
            # offline now: its target waits for it, and it converges when it comes back
            set_target(session, member.device, row.bundle, row.id, now)
            member.previous = snap.active(member.device)
            member.state, member.reason = MemberState.DEFERRED.value, "offline"
    counts = _wave_counts(snap, row.wave)
    judged = (
        counts["total"] - counts[MemberState.DEFERRED.value] - counts[MemberState.SKIPPED.value]
    )
    need = spec.success_threshold.of(judged)
    if counts[MemberState.SUCCEEDED.value] < need:
        data = {"wave": row.wave, "succeeded": counts[MemberState.SUCCEEDED.value], "needed": need}
        _halt(session, row, spec, snap, now, "threshold:success", data)
        return False
    subjects = [
        gates.GateSubject(m.device, m.offered_at, m.previous)
        for m in snap.members
        if m.wave == row.wave
        and m.state == MemberState.SUCCEEDED.value
        and m.cmd_id is not None
        and m.offered_at is not None
    ]
    for gate in spec.gates:
        verdict = gates.evaluate(session, gate, row.bundle, subjects, now)
        if verdict.outcome == "waiting":
            return False
        if verdict.outcome == "breached":
            _halt(
                session, row, spec, snap, now, verdict.reason, {"wave": row.wave, **verdict.numbers}
            )
            return False
    return _next_wave(session, row, spec, snap, counts, now)


def _next_wave(
    session: Session,
    row: RolloutRow,
    spec: RolloutSpec,
    snap: Snapshot,
    counts: dict[str, int],
    now: float,
) -> bool:
    last = max((m.wave for m in snap.members), default=0)
    data = {
        "wave": row.wave,
        "succeeded": counts[MemberState.SUCCEEDED.value],
        "failed": counts[MemberState.FAILED.value],
        "deferred": counts[MemberState.DEFERRED.value],
    }
    if row.wave >= last:
        transition(session, row, RolloutState.COMPLETED, "all_waves_passed", now, data)
        return False
    add_timeline(session, row, now, f"wave_passed:{row.wave}", data)
    if spec.approval and row.approved_wave < row.wave + 1:
        transition(
            session, row, RolloutState.WAITING_APPROVAL, f"approval:wave {row.wave + 1}", now
        )
        return False
    row.wave += 1
    row.next_offer_at = max(row.next_offer_at, now)
    add_timeline(session, row, now, f"wave_started:{row.wave}", {"wave": row.wave})
    return True


def _rate(spec: RolloutSpec, successes: int) -> float:
    rate = spec.rate_per_min
    if spec.growth_every and spec.growth_factor > 1:
        rate *= spec.growth_factor ** (successes // spec.growth_every)
    return min(rate, spec.max_rate_per_min)


def offer(
    session: Session,
    row: RolloutRow,
    spec: RolloutSpec,
    snap: Snapshot,
    eligible: set[str],
    now: float,
) -> None:
    """Offer queued online devices of the open waves, spaced by the rate (with jitter), with
    at most `max_in_flight` offered and not yet finished."""
    queue = [
        m
        for m in snap.members
        if m.state == MemberState.QUEUED.value
        and m.wave <= row.wave
        and m.device in eligible
        and snap.online(m.device)
    ]
    successes = sum(1 for m in snap.members if m.state == MemberState.SUCCEEDED.value)
    interval = 60.0 / _rate(spec, successes)
    in_flight = sum(1 for m in snap.members if m.state == MemberState.OFFERED.value)
    for member in queue:
        if row.next_offer_at > now:
            return
        if spec.max_in_flight and in_flight >= spec.max_in_flight:
            break  # the next offer waits for a device to finish; the pace restarts from now
        member.previous = snap.active(member.device)
        if member.previous == row.bundle:
            _finish(member, MemberState.SUCCEEDED, "already_running", now)
        else:
            member.state, member.offered_at = MemberState.OFFERED.value, now
            set_target(session, member.device, row.bundle, row.id, now)
            in_flight += 1
        spread = random.Random(f"{row.id}:{row.offers}").uniform(-spec.jitter, spec.jitter)
        row.offers += 1
        row.next_offer_at += interval * (1.0 + spread)
    row.next_offer_at = max(row.next_offer_at, now)
