"""The agent daemon: wires the MQTT session, the outbox, the deployer, the pipeline, health and
command handling together, and runs the control loop."""

from __future__ import annotations

import contextlib
import logging
import queue
import signal
import threading
import time
from types import FrameType
from typing import Any

from agent import __version__
from agent.commands import CommandGuard, CommandHandler, SeenCommands
from agent.config_overlay import (
    ConfigRejected,
    apply_overlay,
    load_overlay,
    merge_patch,
    save_overlay,
    settings_with_overlay,
)
from agent.deploy.deployer import DeviceDeployer
from agent.deploy.faults import fault_point_from_env
from agent.deploy.installer import Installer
from agent.deploy.loader import load_model
from agent.deploy.probation import CountingDetector, ModelHealth
from agent.deploy.trust_update import apply_trust_update
from agent.health.bundle_stats import BundleStatsWindow, with_bundle_stats
from agent.health.message import LinkBacklog, health_message
from agent.health.sources import DeviceHealth, profile_health_sources, with_device_health
from agent.health.system import SystemHealth, Uptime
from agent.link.events import EventReporter
from agent.link.identity import DeviceIdentity, RenewalTimer
from agent.link.origin import ControllerOrigin
from agent.link.outbox import Outbox, OutboxPump
from agent.link.session import AgentSession, BrokerSettings
from agent.link.snapshots import SnapshotDelivery
from agent.link.telemetry import DetectionBatcher
from agent.pipeline.snapshots import SnapshotKeeper
from agent.pipeline.sources import resolve_cameras
from agent.pipeline.workers import ActiveModel, Pipeline
from agent.runtimes.base import RuntimeProbe
from agent.runtimes.worker.launch import WorkerEvent, WorkerEventKind
from agent.selection import RuntimeHosts, choose_device, choose_runtime, probe_runtimes
from agent.settings import AgentSettings
from agent.systemd import Notifier
from ota.install import InstalledBundle, SlotStore, StoreCorrupt
from ota.trust import TrustStore
from protocol.codec import encode
from protocol.events import DeviceStatus, EventKind, EventLevel, InstallReason
from protocol.messages import (
    Ack,
    ActiveBundle,
    BundleStats,
    Deploy,
    Event,
    RuntimeInfo,
    RuntimeWorkerHealth,
    Snapshot,
    State,
    TrustUpdate,
)

log = logging.getLogger(__name__)


class Agent:
    """One device's agent; `run()` blocks until `stop()` or SIGTERM."""

    def __init__(self, settings: AgentSettings, notifier: Notifier | None = None) -> None:
        # what set-config saved earlier wins over the settings file and the environment
        settings = settings_with_overlay(settings)
        self.settings = settings
        self.device_id = settings.device_id
        self.data_dir = settings.data_dir
        # bundles, trust, keys and the outbox: readable by the agent's user only
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)
        # the one HTTP origin downloads and snapshot uploads may go to
        origin = ControllerOrigin(
            settings.controller_origin, fallback_host=settings.mqtt.host, ca_file=settings.ca_file
        )
        self.notifier = notifier or Notifier()
        self.uptime = Uptime()
        self.system = SystemHealth(disk_path=self.data_dir)
        device = choose_device(settings.profile)
        self.profile, self.preferences = device.profile, device.preferences
        # runtimes the profile runs under the device's own Python, in worker processes
        workers = {**device.workers, **{str(k): w for k, w in settings.runtime_workers.items()}}
        self.hosts = RuntimeHosts.from_profile(workers, events=self._worker_event)
        self.probes: list[RuntimeProbe] = probe_runtimes(self.hosts)
        self.store = SlotStore(self.data_dir / "bundles")
        # renews the enrolled certificate while the agent runs (None: no enrollment)
        self.renewal: RenewalTimer | None = None
        self.session = AgentSession(
            self._broker_settings(), self.device_id, self.state, tags=settings.tags
        )
        # detections and deployment events go to disk first; the pump publishes them from there
        self.outbox = Outbox(
            settings.outbox.path or self.data_dir / "outbox.sqlite", settings.outbox
        )
        self.pump = OutboxPump(self.outbox, self.session.publish_mid, self.session.connected)
        self.session.on_ack = self.pump.acked
        self.batcher = DetectionBatcher(
            publish=lambda payload, ids: self.outbox.put(
                self.session.topics.det(self.device_id), payload, ids
            ),
            device_id=self.device_id,
            max_batch=settings.det_batch_max,
            max_delay=settings.det_flush_s,
        )
        self.snapshots = SnapshotKeeper(settings.snapshots)
        self.snapshot_delivery = SnapshotDelivery(
            self.snapshots,
            lambda chunk: self.session.publish(self.session.topics.snap(self.device_id), chunk),
            self._ack,
            origin=origin,
        )
        self.pipeline = Pipeline(
            resolve_cameras(settings.cameras, self.profile),
            self.batcher.add,
            self.notifier.watchdog,
            snapshots=self.snapshots,
        )
        self.device_health = self._device_health()
        self.events = EventReporter(
            self.device_id, store=self._store_event, send_now=self._send_event
        )
        fault = fault_point_from_env()
        installer = Installer(
            store=self.store,
            trust_file=settings.trust_file,
            events=self.events,
            activate=self.activate,
            health=self.model_health,
            profile=self.profile,
            probation_s=settings.probation_s,
            max_attempts=settings.max_probation_attempts,
            fault=fault,
        )
        self.deployer = DeviceDeployer(
            store=self.store,
            installer=installer,
            downloads=self.data_dir / "downloads",
            subscribe=self.session.subscribe_bundle,
            unsubscribe=self.session.unsubscribe_bundle,
            events=self.events,
            request_timeout=settings.chunk_request_timeout_s,
            max_requests=settings.chunk_request_attempts,
            fault=fault,
            origin=origin,
            max_bundle_bytes=settings.max_bundle_bytes,
        )
        # every command is checked against the trust file as it is now (a trust-update may
        # have just changed its command keys); seen ids persist so a replay fails after restart
        self.seen_commands = SeenCommands(self.data_dir / "commands-seen.sqlite")
        guard = CommandGuard(self.device_id, self._trust, self.seen_commands)
        self.commands = CommandHandler(self, self._ack, guard=guard)
        self._stop = threading.Event()

    def _trust(self) -> TrustStore:
        """The trust file as it is now, for one command; ota.trust_file (root documents and
        their models) loads with the first command, not with the agent."""
        from ota.trust_file import load_trust_store

        return load_trust_store(self.settings.trust_file)

    # ---- state and events -------------------------------------------------------------------

    def state(self) -> State:
        model = self.pipeline.current()
        active = None
        if model is not None:
            active = ActiveBundle(
                name=model.name,
                version=model.version,
                digest=model.digest,
                runtime=model.runtime,
                reason=model.reason[:4096],
            )
        return State(
            device=self.device_id,
            status=DeviceStatus.ONLINE,
            agent_version=__version__,
            profile=self.profile,
            runtimes=tuple(
                RuntimeInfo(key=p.key, available=p.available, reason=p.reason[:4096])
                for p in self.probes
            ),
            active=active,
            cameras=tuple(c.id for c in self.settings.cameras),
            tags=tuple(self.settings.tags),
        )

    def _store_event(self, event: Event) -> None:
        self.outbox.put(self.session.topics.evt(self.device_id), encode(event), [event.id])

    def _worker_event(self, event: WorkerEvent) -> None:
        """A runtime worker crashed or was restarted: an event the operator sees."""
        self.events.report(
            EventKind.ERROR,
            level=EventLevel.ERROR if event.kind == WorkerEventKind.CRASHED else EventLevel.WARNING,
            message=f"{event.kind} runtime={event.runtime} crashes={event.crashes} "
            f"restarts={event.restarts}: {event.detail}",
        )

    def _send_event(self, event: Event) -> None:
        self.session.publish(self.session.topics.evt(self.device_id), encode(event), qos=1)

    def activate(self, installed: InstalledBundle) -> None:
        """Load `installed` beside the running model and swap it in between two frames.

        Raises ModelLoadFailed when no runtime here can run it or it does not load."""
        choice = choose_runtime(installed.manifest, self.probes, self.preferences)
        model = load_model(
            installed,
            choice,
            threads=self.settings.runtime_threads,
            cache_dir=self.data_dir / "engines",
            runtime_class=self.hosts.runtime_class(choice.runtime),
        )
        # counted per model, so probation judges only the frames this bundle ran on
        model.detector = CountingDetector(model.detector, BundleStatsWindow(model.digest))
        self._swap(model)

    def model_health(self) -> ModelHealth | None:
        """Frames and inference errors of the model the pipeline runs now (for probation)."""
        model = self.pipeline.current()
        if model is None or not isinstance(model.detector, CountingDetector):
            return None
        counted = model.detector
        return ModelHealth(
            digest=model.digest,
            frames=counted.frames,
            errors=counted.errors,
            cameras=len(self.settings.cameras),
            last_error=counted.last_error,
        )

    def _bundle_stats(self) -> BundleStats | None:
        """The active bundle's statistics since it was activated, for rollout gates."""
        model = self.pipeline.current()
        if model is None or not isinstance(model.detector, CountingDetector):
            return None
        stats = model.detector.stats
        return stats.snapshot() if stats is not None else None

    def _runtime_workers(self) -> tuple[RuntimeWorkerHealth, ...]:
        """The crash and restart counts of the worker the active model runs in, if it runs in
        one; an in-process runtime reports nothing."""
        model = self.pipeline.current()
        if not self.hosts.launches or model is None:
            return ()
        if not isinstance(model.detector, CountingDetector):
            return ()
        # both already loaded with the model: importing them here costs nothing
        from agent.detect.detector import Detector
        from agent.runtimes.worker.proxy import WorkerRuntime

        detector = model.detector.inner
        if isinstance(detector, Detector) and isinstance(detector.runtime, WorkerRuntime):
            return (detector.runtime.worker_health(),)
        return ()

    def _swap(self, model: ActiveModel | None) -> None:
        old = self.pipeline.swap(model)
        self.session.publish_state()
        if old is not None:
            # the new model is in; the old one is closed once no camera is mid-frame on it
            if self.pipeline.retire(old, timeout=10.0):
                old.close()
            else:
                log.error("event=old_model_still_busy model=%s", old.label)

    # ---- commands -------------------------------------------------------------------------

    def deploy(self, command: Deploy) -> None:
        self.deployer.on_deploy(command)

    def rollback(self, cmd_id: str) -> tuple[bool, str, str]:
        """Back to the previous bundle unless its release is below the anti-rollback floor."""
        try:
            below = self.store.rollback_refusal()
        except (StoreCorrupt, OSError) as exc:
            return False, InstallReason.STORE_CORRUPT, str(exc)[:4096]
        if below is not None:
            reason = InstallReason.BELOW_RELEASE_FLOOR
            log.warning("event=rollback_refused reason=%s detail=%r", reason, below)
            return False, reason, below
        if self.deployer.rollback(cmd_id):
            return True, EventKind.ROLLED_BACK, ""
        return False, InstallReason.NO_PREVIOUS_BUNDLE, "nothing intact to roll back to"

    def trust_update(self, command: TrustUpdate) -> tuple[bool, str, str]:
        return apply_trust_update(self.settings.trust_file, command)

    def snapshot(self, command: Snapshot) -> None:
        self.snapshot_delivery.submit(command)

    def restart_pipeline(self) -> str:
        """Stop every camera and start them again from the current settings; says what runs."""
        self.pipeline.stop()
        model = self.pipeline.current()
        self.pipeline = Pipeline(
            resolve_cameras(self.settings.cameras, self.profile),
            self.batcher.add,
            self.notifier.watchdog,
            snapshots=self.snapshots,
        )
        self.pipeline.swap(model)
        self.pipeline.start()
        cameras = ",".join(c.id for c in self.settings.cameras) or "none"
        return f"cameras={cameras} model={model.label if model else 'none'}"

    def set_config(self, patch: dict[str, Any]) -> tuple[bool, str, str]:
        """Validate, persist, then apply a partial settings document: (ok, result, detail).
        A refused document changes nothing."""
        try:
            saved = load_overlay(self.data_dir)
        except ConfigRejected as exc:  # a damaged overlay is replaced, not merged
            log.error("event=runtime_overlay_replaced detail=%r", str(exc))
            saved = {}
        try:
            overlay = merge_patch(saved, patch)
            new = apply_overlay(self.settings, overlay)
            save_overlay(self.data_dir, overlay)
        except ConfigRejected as exc:
            log.warning("event=set_config_refused reason=%s detail=%r", exc.reason, str(exc))
            return False, exc.reason, str(exc)[:4096]
        old, self.settings = self.settings, new
        self.batcher.max_batch = new.det_batch_max
        self.batcher.max_delay = new.det_flush_s
        self.snapshots.settings = new.snapshots
        if isinstance(logging.getLevelName(new.log_level.upper()), int):
            logging.getLogger().setLevel(new.log_level.upper())
        if (new.health_sources, new.health_timeout_s) != (old.health_sources, old.health_timeout_s):
            self.device_health.close()
            self.device_health = self._device_health()
        detail = f"applied {', '.join(sorted(patch))}"
        if new.cameras != old.cameras:
            detail += "; " + self.restart_pipeline()
        log.info("event=set_config_applied fields=%s", ",".join(sorted(patch)))
        return True, "applied", detail

    def _device_health(self) -> DeviceHealth:
        sources = self.settings.health_sources
        return DeviceHealth(
            profile_health_sources(self.profile) if sources is None else sources,
            timeout=self.settings.health_timeout_s,
        )

    def _ack(self, cmd_id: str, ok: bool, result: str, detail: str = "") -> None:
        ack = Ack(device=self.device_id, cmd_id=cmd_id, ok=ok, result=result, detail=detail)
        self.session.publish(self.session.topics.ack(self.device_id), encode(ack), qos=1)

    # ---- lifecycle ------------------------------------------------------------------------

    def _restore(self) -> None:
        """Start on the installed bundle (one more probation attempt if it is on trial), or on
        the previous slot if it will not load."""
        self.deployer.restore()

    def publish_health(self) -> None:
        link = LinkBacklog(
            outbox_depth=self.outbox.depth,
            outbox_dropped=self.outbox.dropped,
            mqtt_reconnects=self.session.reconnects,
        )
        message = health_message(
            self.device_id,
            uptime_s=self.uptime.seconds(),
            sample=self.system.sample(),
            cameras=self.pipeline.workers,
            link=link,
            runtime_workers=self._runtime_workers(),
        )
        message = with_device_health(message, self.device_health.sample())
        message = with_bundle_stats(message, self._bundle_stats())
        self.session.publish(self.session.topics.health(self.device_id), encode(message), qos=0)

    def _broker_settings(self) -> BrokerSettings:
        """The broker settings, with the enrolled certificate when enrollment is configured.

        Blocks until the controller issues a certificate (or refuses: EnrollmentRefused).
        """
        broker = self.settings.mqtt
        if self.settings.enrollment.url is None:
            return broker
        identity = DeviceIdentity(
            self.device_id, self.data_dir / "identity", self.settings.enrollment
        )
        files = identity.ensure()
        self.renewal = RenewalTimer(
            identity, lambda renewed: self.session.reload_certificate(renewed.cert, renewed.key)
        )
        if broker.ca_file is not None and broker.cert_file is None:
            return broker.model_copy(update={"cert_file": files.cert, "key_file": files.key})
        return broker

    def run(self) -> None:
        self._restore()
        self.session.start()
        if self.renewal is not None:
            self.renewal.start()
        self.pump.start()
        self.pipeline.start()
        self.notifier.ready(f"device {self.device_id}, {len(self.settings.cameras)} camera(s)")
        log.info(
            "event=agent_started device=%s cameras=%d", self.device_id, len(self.settings.cameras)
        )
        next_health = time.monotonic() + min(2.0, self.settings.health_interval_s)
        resumed = False
        try:
            while not self._stop.is_set():
                try:
                    item = self.session.inbox.get(timeout=0.2)
                except queue.Empty:
                    item = None
                try:
                    if not resumed and self.session.connected.is_set():
                        # connected first, so the chunk subscription precedes the request
                        resumed = True
                        self.deployer.resume()
                    if item is not None and item.kind == "command":
                        try:
                            self.commands.handle(item.payload)
                        finally:
                            # to the broker only now: the command's effect is on disk
                            self.session.done(item)
                    elif item is not None and item.digest is not None:
                        self.deployer.on_chunk(item.digest, item.payload)
                    self.deployer.tick()
                    self.batcher.flush_due()
                except Exception:  # one bad command must not take the daemon down
                    log.exception("event=control_error")
                if time.monotonic() >= next_health:
                    next_health = time.monotonic() + self.settings.health_interval_s
                    self.publish_health()
                if not self.settings.cameras:
                    self.notifier.watchdog()
        finally:
            self.shutdown()

    def stop(self, *_: Any) -> None:
        self._stop.set()

    def shutdown(self) -> None:
        self.notifier.stopping()
        self.pipeline.stop()
        self.snapshot_delivery.stop()
        self.batcher.flush()
        if self.session.connected.is_set() and not self.pump.flush(timeout=5.0):
            log.warning("event=outbox_not_drained depth=%d", self.outbox.depth)
        self.pump.stop()
        if self.renewal is not None:
            self.renewal.stop()
        self.session.stop()
        self.outbox.close()
        self.seen_commands.close()
        self.device_health.close()
        model = self.pipeline.swap(None)
        if model is not None:
            model.close()
        log.info("event=agent_stopped device=%s", self.device_id)

    def install_signal_handlers(self) -> None:
        def handler(signum: int, frame: FrameType | None) -> None:
            self.stop()

        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not the main thread
                signal.signal(sig, handler)
