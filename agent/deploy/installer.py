"""Install a complete bundle file into a slot, put it on probation, then commit or revert.

Runs on the agent's control thread. The order of durable steps is what makes a crash at any
point safe: the slot is written and verified before the pointer moves (`ota.install`), each
start of a bundle on probation is counted on disk before its model loads, and only a bundle
that ran healthy for the whole window is committed. A bundle that fails, or that crashed the
agent `max_attempts` times, is reverted to the slot that ran before.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from agent.deploy.faults import FaultPoint, no_fault
from agent.deploy.loader import ModelLoadFailed
from agent.deploy.probation import HealthSource, Probation
from agent.link.events import NO_DEPLOYMENT, DeploymentRef, EventReporter
from ota.errors import BundleRefused
from ota.install import InstalledBundle, SlotStore, StoreCorrupt
from protocol.events import EventKind, EventLevel, InstallReason, Reason

log = logging.getLogger(__name__)


def _label(bundle: InstalledBundle) -> str:
    return f"{bundle.manifest.name}@{bundle.manifest.version}"


class Installer:
    """Slot install, probation and revert for one agent's bundle store."""

    def __init__(
        self,
        *,
        store: SlotStore,
        trust_file: Path,
        events: EventReporter,
        activate: Callable[[InstalledBundle], None],
        health: HealthSource = lambda: None,
        profile: str | None = None,
        probation_s: float = 0.0,
        max_attempts: int = 3,
        fault: FaultPoint = no_fault,
        clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.trust_file = trust_file
        self._events = events
        self._activate = activate
        self._health = health
        self.profile = profile
        self.probation_s = probation_s
        self.max_attempts = max_attempts
        self._fault = fault
        self._clock = clock
        self.monotonic = monotonic  # the probation window's clock; tests step it
        self.probation: Probation | None = None

    def install(self, path: Path, *, digest: str | None = None, cmd_id: str | None = None) -> bool:
        """Verify and install a bundle file, then start its probation; False on failure."""
        staged = self.stage(path, DeploymentRef(digest, cmd_id))
        return staged is not None and self.begin(*staged)

    def stage(
        self, path: Path, ref: DeploymentRef = NO_DEPLOYMENT
    ) -> tuple[InstalledBundle, DeploymentRef] | None:
        """Verify `path` into the idle slot and switch the pointer to it (on probation); None
        (reported) if it is refused. The returned ref names the bundle by its verified digest."""
        # root documents and their models load with the first install, not with the agent
        from ota.trust_file import load_trust_store

        try:
            trust = load_trust_store(self.trust_file)
        except (OSError, ValueError) as exc:
            message = f"cannot read trust store {self.trust_file}: {exc}"
            self._failed(ref, InstallReason.NO_TRUST_STORE, message)
            return None
        trial = self.probation
        self._events.report(EventKind.INSTALLING, ref)
        try:
            installed = self.store.install(
                path, trust, self._clock(), self.profile, on_stage=self._fault
            )
        except BundleRefused as exc:
            log.warning("event=bundle_refused reason=%s detail=%r", exc.reason, exc.detail)
            self._failed(ref, exc.reason, exc.detail)
            pointer = self.store.pointer()
            if trial is not None and (pointer is None or pointer.digest != trial.installed.digest):
                # the store went back to the committed fallback to make room: so do we
                self._end_trial(trial, "a newer bundle arrived, and was refused")
                self._load_current()
            return None
        except (StoreCorrupt, OSError) as exc:
            # a full disk or a broken store; the pointer moves last, so the old bundle stays
            log.error("event=install_error error=%r", str(exc))
            self._failed(ref, InstallReason.INSTALL_ERROR, str(exc))
            return None
        if trial is not None:
            self._end_trial(trial, "a newer bundle arrived during probation")
        ref = ref.with_bundle(installed.digest)
        self._events.report(EventKind.VERIFIED, ref, message=_label(installed))
        return installed, ref

    def begin(self, installed: InstalledBundle, ref: DeploymentRef) -> bool:
        """Count one start of `installed` on probation, load it and open the window; False
        (reported, reverted) if it crashed too often or does not load."""
        try:
            attempt = self.store.begin_attempt()  # on disk before the load that may crash us
        except (StoreCorrupt, OSError) as exc:
            self._failed(ref, InstallReason.INSTALL_ERROR, str(exc))
            return False
        if attempt > self.max_attempts:
            message = f"the agent stopped {attempt - 1} times with {_label(installed)} on trial"
            self._failed(ref, InstallReason.PROBATION_CRASHES, message)
            self._revert(ref, InstallReason.PROBATION_CRASHES, forget=True)
            return False
        self._events.report(
            EventKind.PROBATION,
            ref,
            message=f"attempt {attempt} of {self.max_attempts}, {self.probation_s:g} s window",
        )
        try:
            self._activate(installed)
        except ModelLoadFailed as exc:
            self._failed(ref, exc.reason, exc.detail)
            self._revert(ref, exc.reason)
            return False
        self._fault("probation")
        self.probation = Probation(
            installed, ref, attempt, deadline=self.monotonic() + self.probation_s
        )
        if self.probation_s <= 0:
            self._commit(self.probation, "no probation window")
        return True

    def tick(self) -> None:
        """Judge the bundle on probation: commit it, revert it, or keep waiting."""
        trial = self.probation
        if trial is None:
            return
        judgement = trial.judge(self._health(), self.monotonic())
        if judgement.verdict == "passed":
            self._commit(trial, judgement.detail)
        elif judgement.verdict == "failed":
            self.probation = None
            # a failed verdict always names its reason; the fallback only satisfies the type
            reason = judgement.reason or InstallReason.NOT_ACTIVE
            for ref in trial.refs:
                self._failed(ref, reason, judgement.detail)
            self._revert(trial.ref, reason)
            for ref in trial.followers:
                self._events.report(EventKind.ROLLED_BACK, ref, reason=reason)

    def restore(self) -> None:
        """Start on what the store says: committed, still on probation (one more attempt), or
        the previous slot when the pointer is unreadable."""
        try:
            pointer = self.store.pointer()
            installed = self.store.current()
        except (StoreCorrupt, OSError) as exc:
            log.error("event=store_unreadable error=%r", str(exc))
            self._revert(NO_DEPLOYMENT, InstallReason.STORE_CORRUPT)
            return
        if pointer is None or installed is None:
            return
        ref = DeploymentRef(installed.digest)
        if pointer.state == "probation":
            self.begin(installed, ref)
            return
        try:
            self._activate(installed)
        except ModelLoadFailed as exc:
            log.error("event=restore_failed reason=%s detail=%r", exc.reason, exc.detail)
            self._failed(ref, exc.reason, exc.detail)
            self._revert(ref, exc.reason)

    def rollback(self, cmd_id: str | None = None) -> bool:
        """Switch back to the previous slot on request; False if there is none that is intact."""
        current = self._current()
        self.probation = None
        bundle = current.digest if current is not None else None
        return self._revert(DeploymentRef(bundle, cmd_id), InstallReason.ROLLBACK_REQUESTED)

    def _failed(self, ref: DeploymentRef, reason: Reason, message: str) -> None:
        self._events.report(
            EventKind.FAILED, ref, reason=reason, level=EventLevel.ERROR, message=message
        )

    def _end_trial(self, trial: Probation, message: str) -> None:
        self.probation = None
        for ref in trial.refs:
            self._events.report(
                EventKind.FAILED,
                ref,
                reason=InstallReason.SUPERSEDED,
                level=EventLevel.WARNING,
                message=message,
            )

    def _commit(self, trial: Probation, detail: str) -> None:
        self.probation = None
        try:
            self.store.commit(trial.installed.digest)
        except (StoreCorrupt, OSError) as exc:
            self._events.report(
                EventKind.ERROR, trial.ref, reason=InstallReason.COMMIT_FAILED, message=str(exc)
            )
            return
        for ref in trial.refs:
            self._events.report(
                EventKind.RUNNING, ref, message=f"{_label(trial.installed)}: {detail}"
            )

    def _revert(self, ref: DeploymentRef, reason: Reason, *, forget: bool = False) -> bool:
        """Back to the other slot; `forget` clears the pointer when there is none, so a bundle
        that keeps crashing the agent is not started again. The rolled_back event names the
        bundle that was left."""
        previous = self.store.rollback()
        if previous is None:
            if forget:
                self.store.clear()
            self._events.report(
                EventKind.ERROR,
                ref,
                reason=InstallReason.NO_PREVIOUS_BUNDLE,
                level=EventLevel.WARNING,
                message="nothing intact to roll back to",
            )
            return False
        try:
            self._activate(previous)
        except ModelLoadFailed as exc:
            self._events.report(
                EventKind.ERROR, ref, reason=exc.reason, level=EventLevel.ERROR, message=exc.detail
            )
            return False
        self._events.report(
            EventKind.ROLLED_BACK,
            ref,
            reason=reason,
            message=f"back on {_label(previous)} ({previous.digest[:12]})",
        )
        return True

    def _load_current(self) -> None:
        current = self._current()
        if current is None:
            return
        try:
            self._activate(current)
        except ModelLoadFailed as exc:
            self._events.report(
                EventKind.ERROR, reason=exc.reason, level=EventLevel.ERROR, message=exc.detail
            )

    def _current(self) -> InstalledBundle | None:
        try:
            return self.store.current()
        except (StoreCorrupt, OSError):
            log.exception("event=store_unreadable")
            return None
