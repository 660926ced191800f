"""The agent daemon: wires the MQTT session, the deployer, the pipeline and telemetry."""

from __future__ import annotations

import contextlib
import logging
import queue
import signal
import threading
import time
from collections import OrderedDict
from types import FrameType
from typing import Any

from agent import __version__
from agent.deployer import Deployer
from agent.health import SystemHealth, Uptime
from agent.loader import DEFAULT_PREFERENCES, ModelLoadFailed, load_model
from agent.pipeline import ActiveModel, Pipeline
from agent.runtimes.base import RuntimeProbe, probe_runtime
from agent.session import AgentSession
from agent.settings import AgentSettings
from agent.systemd import Notifier
from agent.telemetry import DetectionBatcher, health_message
from device_profiles import ProfileError, effective_runtimes
from device_profiles import detect as detect_profile
from ota.install import BundleStore, InstalledBundle
from protocol.codec import encode
from protocol.messages import (
    Ack,
    ActiveBundle,
    Command,
    Deploy,
    Event,
    RestartPipeline,
    Rollback,
    RuntimeInfo,
    State,
)

log = logging.getLogger(__name__)

KNOWN_RUNTIMES = ("tensorrt", "edgetpu", "openvino", "onnx", "litert", "opencv")


def choose_profile(forced: str | None) -> tuple[str, tuple[str, ...]]:
    """The device profile and its runtime preference order (runtime keys, best first)."""
    try:
        detection = detect_profile(forced=forced)
    except ProfileError as exc:
        if forced:
            raise
        log.warning(
            "event=no_profile reason=%r fallback=%s", str(exc), ",".join(DEFAULT_PREFERENCES)
        )
        return "unknown", DEFAULT_PREFERENCES
    order = tuple(dict.fromkeys(r.runtime for r in effective_runtimes(detection)))
    log.info(
        "event=profile_detected profile=%s accelerators=%s runtimes=%s",
        detection.profile.name,
        ",".join(a.name for a in detection.accelerators_found) or "-",
        ",".join(order),
    )
    return detection.profile.name, order


class Agent:
    """One device's agent; `run()` blocks until `stop()` or SIGTERM."""

    def __init__(self, settings: AgentSettings, notifier: Notifier | None = None) -> None:
        self.settings = settings
        self.device_id = settings.device_id
        self.data_dir = settings.data_dir
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.notifier = notifier or Notifier()
        self.uptime = Uptime()
        self.system = SystemHealth(disk_path=self.data_dir)
        self.probes: list[RuntimeProbe] = [probe_runtime(k) for k in KNOWN_RUNTIMES]
        self.profile, self.preferences = choose_profile(settings.profile)
        self.store = BundleStore(self.data_dir / "bundles")
        self.session = AgentSession(settings, self.state)
        self.batcher = DetectionBatcher(
            publish=lambda payload: self.session.publish(
                self.session.topics.det(self.device_id), payload, qos=1
            ),
            device_id=self.device_id,
            max_batch=settings.det_batch_max,
            max_delay=settings.det_flush_s,
        )
        self.pipeline = Pipeline(settings.cameras, self.batcher.add, self.notifier.watchdog)
        self.deployer = Deployer(
            store=self.store,
            downloads=self.data_dir / "downloads",
            trust_file=settings.trust_file,
            subscribe=self.session.subscribe_bundle,
            unsubscribe=self.session.unsubscribe_bundle,
            emit=self.emit,
            activate=self.activate,
            profile=self.profile,
            request_timeout=settings.chunk_request_timeout_s,
        )
        self._seen_commands: OrderedDict[str, None] = OrderedDict()
        self._stop = threading.Event()

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
            status="online",
            agent_version=__version__,
            profile=self.profile,
            runtimes=tuple(
                RuntimeInfo(key=p.key, available=p.available, reason=p.reason[:4096])
                for p in self.probes
            ),
            active=active,
            cameras=tuple(c.id for c in self.settings.cameras),
        )

    def emit(self, kind: str, **fields: Any) -> None:
        """Publish one deployment/diagnostic event on the device's event topic."""
        clean = {k: v for k, v in fields.items() if v is not None}
        for key in ("message", "reason"):
            if key in clean:
                clean[key] = str(clean[key])[: 4096 if key == "message" else 256]
        event = Event(device=self.device_id, kind=kind, **clean)  # type: ignore[arg-type]
        log.info("event=%s bundle=%s reason=%s", kind, (event.bundle or "-")[:12], event.reason)
        self.session.publish(self.session.topics.evt(self.device_id), encode(event), qos=1)

    def activate(self, installed: InstalledBundle) -> None:
        """Load `installed` beside the running model and swap it in between two frames."""
        model = load_model(
            installed, self.probes, self.preferences, threads=self.settings.runtime_threads
        )
        self._swap(model)

    def _swap(self, model: ActiveModel | None) -> None:
        old = self.pipeline.swap(model)
        self.session.publish_state()
        if old is not None:
            # let a worker finish the frame it may be running on the old model
            threading.Timer(2.0, old.close).start()

    # ---- commands -------------------------------------------------------------------------

    def handle_command(self, command: Command) -> None:
        if command.id in self._seen_commands:
            return  # QoS 1 may deliver twice
        self._seen_commands[command.id] = None
        while len(self._seen_commands) > 1000:
            self._seen_commands.popitem(last=False)
        ok, result = True, "accepted"
        if isinstance(command, Deploy):
            self._ack(command.id, True, "accepted")
            self.deployer.on_deploy(command)
            return
        if isinstance(command, Rollback):
            ok = self.deployer.rollback(command.id)
            result = "rolled_back" if ok else "nothing_to_roll_back"
        elif isinstance(command, RestartPipeline):
            self.pipeline.stop()
            model = self.pipeline.current()
            self.pipeline = Pipeline(
                self.settings.cameras, self.batcher.add, self.notifier.watchdog
            )
            self.pipeline.swap(model)
            self.pipeline.start()
            result = "restarted"
        self._ack(command.id, ok, result)

    def _ack(self, cmd_id: str, ok: bool, result: str, detail: str = "") -> None:
        ack = Ack(device=self.device_id, cmd_id=cmd_id, ok=ok, result=result, detail=detail)
        self.session.publish(self.session.topics.ack(self.device_id), encode(ack), qos=1)

    # ---- lifecycle ------------------------------------------------------------------------

    def _restore(self) -> None:
        """Start on the installed bundle; fall back to the previous slot if it will not load."""
        try:
            installed = self.store.current()
        except Exception as exc:
            log.error("event=store_unreadable error=%r", str(exc))
            installed = None
        if installed is None:
            return
        try:
            self.activate(installed)
        except ModelLoadFailed as exc:
            log.error("event=restore_failed reason=%s detail=%r", exc.reason, exc.detail)
            self.deployer.rollback()

    def publish_health(self) -> None:
        message = health_message(self, self.system.sample())
        self.session.publish(self.session.topics.health(self.device_id), encode(message), qos=0)

    def run(self) -> None:
        self._restore()
        self.session.start()
        self.pipeline.start()
        self.notifier.ready(f"device {self.device_id}, {len(self.settings.cameras)} camera(s)")
        log.info(
            "event=agent_started device=%s cameras=%d", self.device_id, len(self.settings.cameras)
        )
        next_health = time.monotonic() + min(2.0, self.settings.health_interval_s)
        try:
            while not self._stop.is_set():
                try:
                    item = self.session.inbox.get(timeout=0.2)
                except queue.Empty:
                    item = None
                try:
                    if item is not None and item.kind == "command":
                        self.handle_command(item.payload)
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
        self.batcher.flush()
        self.session.stop()
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
