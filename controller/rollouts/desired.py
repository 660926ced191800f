"""Desired state: one target per device (a bundle, and the rollout that set it), delivered by
a deployment and reconciled against what the device says it runs.

A target is set first and its deployment sent after, so a controller killed in between finds
the target without a deployment on restart. Before sending, `deliver` adopts a deployment of
the same bundle made since the target was set (a kill after the send, before it was recorded),
so a device is never offered the same target twice.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from controller.bundles.repository import UnknownBundle
from controller.db import Bundle, Deployment, Device
from controller.fleet.deployments import DeploymentService, UnknownDevice
from controller.mqtt.session import PublishError
from controller.rollouts.models import DeviceInventory, DeviceTarget
from controller.rollouts.spec import StageTimeouts
from protocol.events import DeploymentStatus

log = logging.getLogger(__name__)

# targets whose deployments are recorded in one transaction, then sent: a wave of 500 devices
# took 19 s to go out one transaction (five, in fact) per device
DELIVERY_BATCH = 200

# the stage a deployment's status is in; each stage has its own timeout
STAGES = {
    DeploymentStatus.PENDING.value: "offered",
    DeploymentStatus.SENT.value: "offered",
    DeploymentStatus.ACCEPTED.value: "offered",
    DeploymentStatus.DOWNLOADING.value: "downloading",
    DeploymentStatus.VERIFIED.value: "downloading",
    DeploymentStatus.INSTALLING.value: "installing",
    DeploymentStatus.PROBATION.value: "probation",
}
FINAL_STATUSES = frozenset(
    {
        DeploymentStatus.RUNNING.value,
        DeploymentStatus.FAILED.value,
        DeploymentStatus.ROLLED_BACK.value,
    }
)


@dataclass(frozen=True)
class TargetView:
    """A device's target beside what it runs; `drift` when a delivered target is not running."""

    device: str
    bundle: str
    rollout: str | None
    set_at: float
    cmd_id: str | None
    deployment_status: str | None
    active: str | None
    online: bool

    @property
    def converged(self) -> bool:
        return self.active == self.bundle

    @property
    def drift(self) -> bool:
        """The target was delivered and finished, yet the device runs something else."""
        return not self.converged and self.deployment_status in FINAL_STATUSES


def set_target(
    session: Session, device: str, bundle: str, rollout: str | None, now: float
) -> DeviceTarget:
    """Make `bundle` the device's target; its deployment is sent by `deliver` or `reconcile`."""
    row = session.get(DeviceTarget, device)
    if row is None:
        row = DeviceTarget(device=device, bundle=bundle, rollout=rollout, set_at=now, cmd_id=None)
        session.add(row)
    else:
        row.bundle, row.rollout, row.set_at, row.cmd_id = bundle, rollout, now, None
    return row


def set_revert_target(
    session: Session, device: str, previous: str, rollout: str, now: float
) -> DeviceTarget | None:
    """Make the bundle a device ran before a rollout its target again. A bundle the controller
    never had (installed at provisioning, say) cannot be a target: the device's own slot holds
    it and a rollback command restores it, so the target is cleared and None returned."""
    if session.get(Bundle, previous) is None:
        clear_target(session, device)
        return None
    return set_target(session, device, previous, rollout, now)


def clear_target(session: Session, device: str) -> None:
    row = session.get(DeviceTarget, device)
    if row is not None:
        session.delete(row)


def _adoptable(session: Session, target: DeviceTarget) -> Deployment | None:
    return session.scalar(
        select(Deployment)
        .where(
            Deployment.device == target.device,
            Deployment.bundle == target.bundle,
            Deployment.created >= target.set_at,
        )
        .order_by(Deployment.created.desc())
        .limit(1)
    )


class Reconciler:
    """Sends each target's deployment once, and lists targets beside what devices run."""

    def __init__(self, sessions: sessionmaker[Session], deployer: DeploymentService) -> None:
        self._sessions = sessions
        self._deployer = deployer

    def deliver(self, device: str) -> str | None:
        """Send (or adopt) the deployment of the device's target; returns its command id.

        None when the device has no target or the deployment could not be recorded.
        """
        with self._sessions.begin() as session:
            target = session.get(DeviceTarget, device)
            if target is None:
                return None
            if target.cmd_id is not None:
                return target.cmd_id
            found = _adoptable(session, target)
            if found is not None:
                target.cmd_id = found.cmd_id
                return found.cmd_id
            bundle = target.bundle
        try:
            self._deployer.deploy(device, bundle)
        except PublishError as exc:  # the deployment is recorded as failed; adopted below
            log.warning("event=target_not_sent device=%s error=%r", device, str(exc))
        except (UnknownDevice, UnknownBundle) as exc:
            log.error("event=target_undeliverable device=%s error=%r", device, str(exc))
            return None
        with self._sessions.begin() as session:
            target = session.get(DeviceTarget, device)
            if target is None:
                return None
            found = _adoptable(session, target)
            if found is not None:
                target.cmd_id = found.cmd_id
            return target.cmd_id

    def reconcile(self) -> int:
        """Deliver every undelivered target of an online device that does not run it yet."""
        with self._sessions() as session:
            due = list(
                session.scalars(
                    select(DeviceTarget.device)
                    .join(Device, Device.id == DeviceTarget.device)
                    .outerjoin(DeviceInventory, DeviceInventory.device == DeviceTarget.device)
                    .where(
                        DeviceTarget.cmd_id.is_(None),
                        Device.online.is_(True),
                        DeviceInventory.decommissioned.is_(None),
                        (Device.active_digest.is_(None))
                        | (Device.active_digest != DeviceTarget.bundle),
                    )
                )
            )
        sent = 0
        for start in range(0, len(due), DELIVERY_BATCH):
            sent += self._deliver_batch(due[start : start + DELIVERY_BATCH])
        if sent:
            log.info("event=targets_reconciled sent=%d", sent)
        return sent

    def _deliver_batch(self, devices: Sequence[str]) -> int:
        """`deliver` for many devices: their deployments recorded in one transaction, with
        each target pointing at its own, then sent; returns how many went out."""
        commands = []
        with self._sessions.begin() as session:
            for device in devices:
                target = session.get(DeviceTarget, device)
                if target is None or target.cmd_id is not None:
                    continue
                found = _adoptable(session, target)
                if found is not None:
                    target.cmd_id = found.cmd_id
                    continue
                try:
                    command = self._deployer.record(session, device, target.bundle)
                except (UnknownDevice, UnknownBundle) as exc:
                    log.error("event=target_undeliverable device=%s error=%r", device, str(exc))
                    continue
                target.cmd_id = command.id
                commands.append(command)
        # committed first, so an ack that races back finds its deployment; one that could
        # not be sent is `failed`, and stays the target's, as in `deliver`
        errors = self._deployer.dispatch(commands)
        for cmd_id, error in errors.items():
            log.warning("event=target_not_sent cmd=%s error=%r", cmd_id, str(error))
        return len(commands) - len(errors)

    def targets(self, device: str | None = None) -> list[TargetView]:
        """Targets with the device's active bundle and the delivering deployment's status."""
        query = (
            select(DeviceTarget, Device.active_digest, Device.online, Deployment.status)
            .join(Device, Device.id == DeviceTarget.device)
            .outerjoin(Deployment, Deployment.cmd_id == DeviceTarget.cmd_id)
            .order_by(DeviceTarget.device)
        )
        if device is not None:
            query = query.where(DeviceTarget.device == device)
        with self._sessions() as session:
            return [
                TargetView(
                    device=t.device,
                    bundle=t.bundle,
                    rollout=t.rollout,
                    set_at=t.set_at,
                    cmd_id=t.cmd_id,
                    deployment_status=status,
                    active=active,
                    online=bool(online),
                )
                for t, active, online, status in session.execute(query)
            ]


def expire_deployments(session: Session, timeouts: StageTimeouts, now: float) -> int:
    """Fail every deployment that sat in one stage past its timeout (`timeout:<stage>`), so none
    stays open forever, whoever started it; returns how many."""
    expired = 0
    for status, stage in STAGES.items():
        limit: float = getattr(timeouts, f"{stage}_s")
        rows = session.scalars(
            select(Deployment).where(Deployment.status == status, Deployment.updated < now - limit)
        )
        for row in rows:
            row.status, row.reason, row.updated = (
                DeploymentStatus.FAILED.value,
                f"timeout:{stage}",
                now,
            )
            expired += 1
    if expired:
        log.warning("event=deployments_expired count=%d", expired)
    return expired
