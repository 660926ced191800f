"""The rollout state machine, persisted in the database and driven by `tick(now)`.

Each tick, for every rollout still followed: start it when its time comes; read the status of
every member's deployment (a device succeeds when its deployment reports `running`, which the
agent sends once probation passed); fail members stuck past their stage's timeout; trip the
wave's failure threshold; when a wave has settled, check its success threshold and gates and
open the next wave; offer queued online devices at the rollout's rate. Offers are committed
(member `offered`, device target set) before any command is sent, and sent afterwards, adopting
a deployment already made for the target: a controller killed at any point resumes without
offering a device twice or forgetting one. Time is passed in, so tests drive it without sleeping.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable, Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from controller.db import Device
from controller.mqtt.commands import CommandSender
from controller.mqtt.session import PublishError
from controller.rollouts.desired import Reconciler, expire_deployments, set_revert_target
from controller.rollouts.inventory import resolve_bundle, select_devices
from controller.rollouts.models import RolloutDevice, RolloutRow
from controller.rollouts.spec import RolloutSpec, Selector, StageTimeouts
from controller.rollouts.states import (
    FOLLOWED_STATES,
    OPEN_STATES,
    EmptySelection,
    InvalidTransition,
    MemberState,
    RolloutState,
    UnknownRollout,
)
from controller.rollouts.steps import (
    Snapshot,
    add_timeline,
    drop_deferred,
    failure_tripped,
    finish_revert,
    follow,
    join_new,
    judge_wave,
    new_member,
    offer,
    start_revert,
    transition,
)
from protocol.messages import Rollback

log = logging.getLogger(__name__)

DEFAULT_REVERT_RETRY_S = 60.0


class RolloutEngine:
    """Creates rollouts, takes operators' actions, and moves every rollout on each tick."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        reconciler: Reconciler,
        commands: CommandSender,
        *,
        clock: Callable[[], float] = time.time,
        revert_retry_s: float = DEFAULT_REVERT_RETRY_S,
        deployment_timeouts: StageTimeouts | None = None,
    ) -> None:
        self._sessions = sessions
        self._reconciler = reconciler
        self._commands = commands
        self._clock = clock
        self._revert_retry_s = revert_retry_s
        # for deployments no rollout follows (a plain deploy): rollouts apply their own first
        self._deployment_timeouts = deployment_timeouts or StageTimeouts()

    # ---- operator actions ----------------------------------------------------------------

    def create(
        self,
        name: str,
        bundle_ref: str,
        selector: Selector,
        spec: RolloutSpec,
        start_at: float | None = None,
    ) -> str:
        """Record a rollout over the devices `selector` matches now; returns its id.

        Raises EmptySelection, and the inventory's bundle and group errors.
        """
        now = self._clock()
        with self._sessions.begin() as session:
            digest = resolve_bundle(session, bundle_ref)
            devices = select_devices(session, selector)
            if not devices:
                raise EmptySelection("the selector matches no device")
            rollout_id = uuid.uuid4().hex[:16]
            state = RolloutState.SCHEDULED
            row = RolloutRow(
                id=rollout_id,
                name=name,
                bundle=digest,
                selector=selector.model_dump(mode="json", exclude_defaults=True),
                spec=spec.model_dump(mode="json"),
                state=state.value,
                wave=0,
                approved_wave=0,
                start_at=start_at,
                next_offer_at=0.0,
                offers=0,
                reason="",
                created=now,
                updated=now,
            )
            session.add(row)
            session.flush()
            # a stable shuffle: waves are spread over the fleet, the same on every replica
            order = sorted(devices, key=lambda d: (random.Random(f"{rollout_id}:{d}").random(), d))
            position = 0
            for wave, size in enumerate(spec.wave_sizes(len(order))):
                for device in order[position : position + size]:
                    session.add(new_member(rollout_id, device, wave, position))
                    position += 1
            add_timeline(
                session,
                row,
                now,
                "created",
                {"devices": len(order), "waves": spec.wave_sizes(len(order))},
            )
        log.info("event=rollout_created rollout=%s devices=%d", rollout_id, len(devices))
        return rollout_id

    def pause(self, rollout_id: str) -> None:
        self._act(rollout_id, OPEN_STATES - {RolloutState.PAUSED}, RolloutState.PAUSED, "paused")

    def resume(self, rollout_id: str) -> None:
        """Continue a paused or halted rollout. Raises UnknownRollout, InvalidTransition."""
        now = self._clock()
        with self._sessions.begin() as session:
            row = _rollout(session, rollout_id)
            if row.state not in (RolloutState.PAUSED.value, RolloutState.HALTED.value):
                raise InvalidTransition(f"a {row.state} rollout cannot resume")
            row.next_offer_at = max(row.next_offer_at, now)
            transition(session, row, RolloutState.RUNNING, "resumed", now)

    def approve(self, rollout_id: str) -> None:
        """Open the next wave of a rollout waiting for approval."""
        now = self._clock()
        with self._sessions.begin() as session:
            row = _rollout(session, rollout_id)
            if row.state != RolloutState.WAITING_APPROVAL.value:
                raise InvalidTransition(f"a {row.state} rollout waits for no approval")
            row.approved_wave = row.wave + 1
            row.wave += 1
            row.next_offer_at = max(row.next_offer_at, now)
            transition(session, row, RolloutState.RUNNING, f"approved:wave {row.wave}", now)

    def cancel(self, rollout_id: str) -> None:
        """Offer no more devices; those already offered keep what they get."""
        self._stop(rollout_id, RolloutState.CANCELLED, "cancelled", revert=False)

    def abort(self, rollout_id: str, revert: bool = False) -> None:
        """Stop now; with `revert`, send every touched device back to its previous bundle."""
        self._stop(rollout_id, RolloutState.ABORTED, "aborted", revert=revert)

    def _act(
        self, rollout_id: str, allowed: Iterable[RolloutState], to: RolloutState, reason: str
    ) -> None:
        now = self._clock()
        with self._sessions.begin() as session:
            row = _rollout(session, rollout_id)
            if row.state not in {s.value for s in allowed}:
                raise InvalidTransition(f"a {row.state} rollout cannot be {reason}")
            transition(session, row, to, reason, now)

    def _stop(self, rollout_id: str, to: RolloutState, reason: str, *, revert: bool) -> None:
        now = self._clock()
        with self._sessions.begin() as session:
            row = _rollout(session, rollout_id)
            stoppable = OPEN_STATES | {RolloutState.HALTED}
            if revert:
                stoppable |= {RolloutState.COMPLETED, RolloutState.CANCELLED, RolloutState.ABORTED}
            if row.state not in {s.value for s in stoppable}:
                raise InvalidTransition(f"a {row.state} rollout cannot be {reason}")
            snap = Snapshot(session, row)
            if row.state != to.value:
                transition(session, row, to, reason + (":revert" if revert else ":keep"), now)
            drop_deferred(session, row, snap)
            if revert:
                start_revert(session, row, snap, now, reason)

    # ---- the tick ------------------------------------------------------------------------

    def tick(self, now: float | None = None) -> None:
        """Move every followed rollout one step at time `now`, then reconcile targets."""
        now = self._clock() if now is None else now
        with self._sessions() as session:
            ids = list(
                session.scalars(
                    select(RolloutRow.id)
                    .where(RolloutRow.state.in_([s.value for s in FOLLOWED_STATES]))
                    .order_by(RolloutRow.created)
                )
            )
        for rollout_id in ids:
            try:
                self._advance(rollout_id, now)
                self._send(rollout_id, now)
            except Exception:  # one broken rollout must not stop the others
                log.exception("event=rollout_tick_failed rollout=%s", rollout_id)
        with self._sessions.begin() as session:
            expire_deployments(session, self._deployment_timeouts, now)
        self._reconciler.reconcile()

    def _advance(self, rollout_id: str, now: float) -> None:
        with self._sessions.begin() as session:
            row = session.get(RolloutRow, rollout_id, with_for_update=True)
            if row is None:
                return
            spec = RolloutSpec.model_validate(row.spec)
            if row.state == RolloutState.SCHEDULED.value and (
                row.start_at is None or now >= row.start_at
            ):
                row.next_offer_at = now
                transition(session, row, RolloutState.RUNNING, "started", now, {"wave": 0})
            snap = Snapshot(session, row)
            settled = RolloutState(row.state) not in OPEN_STATES | {RolloutState.REVERTING}
            if settled and not any(
                m.state in (MemberState.OFFERED.value, MemberState.DEFERRED.value)
                for m in snap.members
            ):
                return  # nothing left to follow: no offer in flight, no device awaited
            for member in snap.members:
                follow(session, row, spec, snap, member, now)
            state = RolloutState(row.state)
            if state is RolloutState.REVERTING:
                finish_revert(session, row, snap, now)
                return
            judged = (RolloutState.RUNNING, RolloutState.PAUSED, RolloutState.WAITING_APPROVAL)
            if state in judged and failure_tripped(session, row, spec, snap, now):
                return
            if state is RolloutState.RUNNING:
                # one selection per tick: it reads every device the selector may match
                matching = select_devices(session, Selector.model_validate(row.selector))
                join_new(session, row, snap, matching, now)
                eligible = set(matching)
                if judge_wave(session, row, spec, snap, eligible, now):
                    offer(session, row, spec, snap, eligible, now)

    def _send(self, rollout_id: str, now: float) -> None:
        with self._sessions() as session:
            pending = list(
                session.scalars(
                    select(RolloutDevice).where(
                        RolloutDevice.rollout == rollout_id,
                        RolloutDevice.state == MemberState.OFFERED.value,
                        RolloutDevice.cmd_id.is_(None),
                    )
                )
            )
            reverting = list(
                session.scalars(
                    select(RolloutDevice).where(
                        RolloutDevice.rollout == rollout_id,
                        RolloutDevice.state == MemberState.REVERTING.value,
                    )
                )
            )
            bundle = session.scalar(select(RolloutRow.bundle).where(RolloutRow.id == rollout_id))
        for member in pending:
            cmd_id = self._reconciler.deliver(member.device)
            if cmd_id is None:
                continue
            with self._sessions.begin() as session:
                row = session.get(RolloutDevice, (rollout_id, member.device))
                if row is not None and row.cmd_id is None:
                    row.cmd_id = cmd_id
        for member in reverting:
            self._send_rollback(member, bundle, now)

    def _send_rollback(self, member: RolloutDevice, bundle: str | None, now: float) -> None:
        with self._sessions() as session:
            device = session.get(Device, member.device)
            active = device.active_digest if device else None
        if active != bundle:
            return
        if member.revert_at is not None and now - member.revert_at < self._revert_retry_s:
            return
        command = Rollback(device=member.device)
        with self._sessions.begin() as session:
            row = session.get(RolloutDevice, (member.rollout, member.device))
            if row is None or row.state != MemberState.REVERTING.value:
                return
            row.revert_cmd, row.revert_at = command.id, now
            if row.previous is not None:
                target = set_revert_target(session, row.device, row.previous, row.rollout, now)
                if target is not None:
                    target.cmd_id = command.id  # carried by the rollback, not by a deployment
        try:
            self._commands.send(command)
        except PublishError as exc:
            log.warning("event=rollback_not_sent device=%s error=%r", member.device, str(exc))
            return
        log.info("event=rollback_sent device=%s rollout=%s", member.device, member.rollout)


def _rollout(session: Session, rollout_id: str) -> RolloutRow:
    row = session.get(RolloutRow, rollout_id, with_for_update=True)
    if row is None:
        raise UnknownRollout(f"no rollout {rollout_id!r}")
    return row
