"""One simulated agent: the agent's side of the wire contract, with a simulated model.

What is real: the MQTT session (its own client id, a persistent session and a Last Will, as
the agent's), the messages (`protocol`), the chunk requests and their backoff, the reassembly
of each device's own copy of a bundle (`ota.transfer.ChunkAssembler`, which checks the file's
sha256 against the offer), and the signature and file checks (`ota.verify.verify_bundle`).
The verifier runs once per distinct bundle digest in the process and its answer is shared:
each device's copy is its own bytes, and they are the verified bytes because their sha256 is
the digest the answer is kept under. What is simulated: the slots (no unpacking), the model
(fps, inference time, detections from the knobs) and the agent's restarts.
"""

from __future__ import annotations

import contextlib
import logging
import random
import shutil
import socket
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from controller.demo.sim.knobs import BundleBehaviour, SimCounters, SimKnobs
from controller.demo.sim.loop import Loop, Timer
from ota.errors import BundleRefused
from ota.manifest import Manifest
from ota.transfer import ChunkAssembler, Offer, TransferError
from ota.trust import TrustStore
from ota.verify import verify_bundle
from protocol.codec import decode_chunk, decode_command, encode
from protocol.errors import ProtocolError
from protocol.events import (
    DeviceStatus,
    EventKind,
    EventLevel,
    InstallReason,
    RefusalReason,
    TransferReason,
)
from protocol.messages import (
    Ack,
    ActiveBundle,
    BundleStats,
    CameraHealth,
    ChunkRange,
    Deploy,
    Event,
    Health,
    Rollback,
    RuntimeInfo,
    State,
)
from protocol.topics import Topics


class FleetContext(Protocol):
    """What a simulated device reads from the fleet that runs it (SimFleet)."""

    loop: Loop
    knobs: SimKnobs
    counters: SimCounters
    topics: Topics
    workdir: Path
    installed: SimBundle | None
    host: str
    port: int
    keepalive: int
    started: float
    verifier: SharedVerifier
    # a device's TLS files (fleet CA, its certificate, its key) by id; None: plain MQTT
    tls: Callable[[str], TlsFiles] | None


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


log = logging.getLogger(__name__)

SEEN_COMMANDS = 256
READ_BURST = 256 * 1024
AGENT_VERSION = "sim"


class SharedVerifier:
    """`ota.verify.verify_bundle`, run once per distinct bundle digest; its answer is kept."""

    def __init__(self, trust: TrustStore, counters: SimCounters) -> None:
        self.trust = trust
        self._counters = counters
        self._answers: dict[str, Manifest | BundleRefused] = {}

    def verify(self, path: Path, digest: str) -> Manifest:
        """The manifest of the bundle at `path`, whose sha256 the caller checked is `digest`.

        Raises BundleRefused."""
        answer = self._answers.get(digest)
        if answer is None:
            with path.open("rb") as stream:
                try:
                    answer = verify_bundle(stream, self.trust, datetime.now(timezone.utc))
                except BundleRefused as exc:
                    answer = exc
            self._counters.verifier_runs += 1
            self._answers[digest] = answer
        if isinstance(answer, BundleRefused):
            raise answer
        return answer


@dataclass(frozen=True)
class SimBundle:
    name: str
    version: int
    digest: str
    behaviour: BundleBehaviour


@dataclass
class Trial:
    """A bundle on probation and the deployments its outcome belongs to."""

    bundle: SimBundle
    cmd_ids: list[str | None]
    attempt: int = 1
    timer: Timer | None = None


@dataclass
class Transfer:
    assembler: ChunkAssembler
    name: str
    version: int
    cmd_ids: list[str | None]
    received: int = 0
    requests: int = 0
    reported_steps: int = -1
    last_progress: float = field(default_factory=time.monotonic)
    fail_at: int = 0
    offline_at: int = 0

    @property
    def digest(self) -> str:
        return self.assembler.offer.digest

    @property
    def cmd_id(self) -> str | None:
        return self.cmd_ids[-1]


class SimDevice:
    """One simulated agent; every method runs on the fleet's loop thread."""

    def __init__(self, fleet: FleetContext, device_id: str, *, slow: bool) -> None:
        self.fleet = fleet
        self.loop: Loop = fleet.loop
        self.knobs: SimKnobs = fleet.knobs
        self.counters: SimCounters = fleet.counters
        self.topics: Topics = fleet.topics
        self.id = device_id
        self.slow = slow
        self.rng = random.Random(f"{self.knobs.seed}:{device_id}")
        self.workdir = fleet.workdir / device_id
        self.current: SimBundle | None = fleet.installed
        self.previous: SimBundle | None = None
        self.activated_at = time.monotonic()
        self.trial: Trial | None = None
        self.transfer: Transfer | None = None
        self.up = True  # the agent process is alive
        self.online = False
        self.stopping = False
        self._seen: OrderedDict[str, None] = OrderedDict()
        rate = self.knobs.link_mb_s * 1e6
        self.rate = rate * self.knobs.slow_factor if slow else rate
        self._tokens = float(READ_BURST)
        self._stamp = time.monotonic()
        self._paused = False
        self._stall_timer: Timer | None = None
        self._connected_once = False
        self.client = self._client()

    # ---- connection ------------------------------------------------------------------------

    def _client(self) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.id,  # as the agent: the certificate name is the client id
            clean_session=False,
        )
        client.will_set(
            self.topics.state(self.id),
            encode(State(device=self.id, status=DeviceStatus.OFFLINE)),
            qos=1,
            retain=True,
        )
        if self.fleet.tls is not None:
            # as the agent: the fleet CA's certificate for this id, its name the user name
            files = self.fleet.tls(self.id)
            client.tls_set(ca_certs=str(files.ca), certfile=str(files.cert), keyfile=str(files.key))
        client.max_inflight_messages_set(20)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_socket_open = lambda c, u, sock: self.loop.add(_sock(sock), self)
        client.on_socket_close = lambda c, u, sock: self.loop.remove(_sock(sock))
        client.on_socket_register_write = lambda c, u, sock: self.loop.want_write(_sock(sock), True)
        client.on_socket_unregister_write = lambda c, u, sock: self.loop.want_write(
            _sock(sock), False
        )
        return client

    def connect(self) -> None:
        """Open the connection (the CONNACK arrives through the loop); retries on failure."""
        if self.stopping or not self.up:
            return
        try:
            if not self._connected_once:
                self._connected_once = True
                self.client.connect(self.fleet.host, self.fleet.port, self.fleet.keepalive)
            else:
                self.client.reconnect()
        except OSError as exc:
            log.debug("event=sim_connect_failed device=%s error=%r", self.id, str(exc))
            self.loop.call_later(1.0 + self.rng.random(), self.connect)

    def on_readable(self) -> None:
        if self.client.socket() is None:
            return
        if self.rate > 0:
            now = time.monotonic()
            self._tokens = min(float(READ_BURST), self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            if self._tokens <= 0:
                self._pause(-self._tokens / self.rate)
                return
        self.client.loop_read()
        # TLS: bytes already decrypted wait inside the SSL object, where select() sees nothing
        sock = self.client.socket()
        for _ in range(64):
            if not isinstance(sock, ssl.SSLSocket) or not sock.pending():
                break
            self.client.loop_read()
            sock = self.client.socket()

    def _pause(self, seconds: float) -> None:
        sock = self.client.socket()
        if sock is None or self._paused:
            return
        self._paused = True
        self.loop.pause_reading(_sock(sock), True)

        def resume() -> None:
            self._paused = False
            current = self.client.socket()
            if current is not None:
                self.loop.pause_reading(_sock(current), False)

        self.loop.call_later(max(0.001, seconds), resume)

    def on_writable(self) -> None:
        if self.client.socket() is not None:
            self.client.loop_write()

    def misc(self) -> None:
        if self.client.socket() is not None:
            self.client.loop_misc()

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            log.warning("event=sim_connect_refused device=%s reason=%s", self.id, reason)
            return
        self.online = True
        subs = [(self.topics.cmd(self.id), 1)]
        if self.transfer is not None:
            subs.append((self.topics.bundle_chunks(self.transfer.digest), 1))
        client.subscribe(subs)
        self.publish_state()
        if self.transfer is not None:
            self._request_missing()  # after a restart or an outage: only what is missing

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, _r: Any, _p: Any) -> None:
        self.online = False
        if self.up and not self.stopping:
            self.loop.call_later(1.0 + self.rng.random(), self.connect)

    def drop(self) -> None:
        """Lose the connection without a word, as a crash or a cut link does (the broker then
        publishes the Last Will)."""
        sock = self.client.socket()
        if sock is None:
            return
        raw = _sock(sock)
        self.loop.remove(raw)
        with contextlib.suppress(OSError):
            raw.shutdown(socket.SHUT_RDWR)
        self.client.loop_read()  # paho sees the closed socket, closes it and says disconnected

    def stop(self) -> None:
        """A clean agent stop: offline state (retained), then DISCONNECT."""
        self.stopping = True
        for timer in (self._stall_timer, self.trial.timer if self.trial else None):
            if timer is not None:
                timer.cancel()
        if self.online:
            self.client.publish(
                self.topics.state(self.id),
                encode(State(device=self.id, status=DeviceStatus.OFFLINE)),
                qos=1,
                retain=True,
            )
            self.client.disconnect()
        elif self.client.socket() is not None:
            self.drop()

    def cleanup(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)

    # ---- messages out ----------------------------------------------------------------------

    def publish_state(self) -> None:
        active = None
        if self.current is not None:
            active = ActiveBundle(
                name=self.current.name,
                version=self.current.version,
                digest=self.current.digest,
                runtime=self.knobs.runtime,
                reason="simulated device",
            )
        state = State(
            device=self.id,
            status=DeviceStatus.ONLINE,
            agent_version=AGENT_VERSION,
            profile=self.knobs.profile,
            runtimes=(RuntimeInfo(key=self.knobs.runtime, available=True),),
            active=active,
            cameras=("cam0",),
            tags=self.knobs.tags,
        )
        self.client.publish(self.topics.state(self.id), encode(state), qos=1, retain=True)

    def event(
        self,
        kind: EventKind,
        digest: str | None,
        cmd_id: str | None,
        *,
        reason: str | None = None,
        level: EventLevel = EventLevel.INFO,
        message: str = "",
        progress: float | None = None,
        missing: tuple[ChunkRange, ...] = (),
    ) -> None:
        event = Event(
            device=self.id,
            kind=kind,
            level=level,
            bundle=digest,
            cmd_id=cmd_id,
            reason=reason,
            message=message,
            progress=progress,
            missing=missing,
        )
        self.client.publish(self.topics.evt(self.id), encode(event), qos=1)

    def _events(self, kind: EventKind, digest: str, cmd_ids: list[str | None], **kw: Any) -> None:
        for cmd_id in cmd_ids:
            self.event(kind, digest, cmd_id, **kw)

    def ack(self, cmd_id: str, ok: bool, result: str, detail: str = "") -> None:
        ack = Ack(device=self.id, cmd_id=cmd_id, ok=ok, result=result, detail=detail)
        self.client.publish(self.topics.ack(self.id), encode(ack), qos=1)

    def publish_health(self) -> None:
        if not self.online:
            return
        stats = self.bundle_stats()
        cameras: tuple[CameraHealth, ...] = ()
        if stats is not None:
            cameras = (
                CameraHealth(
                    camera="cam0",
                    fps_in=stats.fps,
                    fps_processed=stats.fps,
                    frames_in=stats.frames,
                    frames_processed=stats.frames,
                    inference_ms=stats.infer_ms_p95 or 0.0,
                ),
            )
        health = Health(
            device=self.id,
            uptime_s=time.monotonic() - self.fleet.started,
            cameras=cameras,
            bundle_stats=stats,
        )
        self.client.publish(self.topics.health(self.id), encode(health), qos=0)

    def bundle_stats(self) -> BundleStats | None:
        """The simulated model's statistics since its bundle was activated."""
        if self.current is None:
            return None
        b, k = self.current.behaviour, self.knobs
        noise = 1.0 + (self.rng.random() - 0.5) * 0.04
        window = max(0.0, time.monotonic() - self.activated_at)
        fps = k.fps * b.fps_factor * noise
        return BundleStats(
            digest=self.current.digest,
            frames=int(fps * window),
            window_s=round(window, 3),
            fps=round(fps, 3),
            infer_ms_p95=round(k.infer_ms * b.infer_ms_factor * noise, 3),
            det_rate=round(k.det_rate * b.det_rate_factor * noise, 4),
            mean_score=min(1.0, max(0.0, k.mean_score + b.score_shift)),
        )

    # ---- messages in -----------------------------------------------------------------------

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            parsed = self.topics.parse(msg.topic)
            if parsed.digest is not None:
                self._on_chunk(parsed.digest, msg.payload)
                return
            command = decode_command(msg.payload)
        except ProtocolError as exc:
            log.warning("event=sim_message_rejected device=%s error=%r", self.id, str(exc))
            return
        if command.device != self.id or self._repeat(command.id):
            return
        if isinstance(command, Deploy):
            self._on_deploy(command)
        elif isinstance(command, Rollback):
            self._on_rollback(command.id)
        else:
            # the simulated agent has no pipeline, settings or snapshots: it says so
            self.ack(command.id, True, "simulated", f"{command.type} has no effect here")

    def _repeat(self, cmd_id: str) -> bool:
        if cmd_id in self._seen:
            return True
        self._seen[cmd_id] = None
        while len(self._seen) > SEEN_COMMANDS:
            self._seen.popitem(last=False)
        return False

    def _on_deploy(self, command: Deploy) -> None:
        offer = command.bundle
        self.counters.deploys += 1
        if self.current is not None and self.current.digest == offer.digest:
            if self.trial is not None and self.trial.bundle.digest == offer.digest:
                self.trial.cmd_ids.append(command.id)
                self.event(EventKind.PROBATION, offer.digest, command.id, message="on trial")
            else:
                self.event(EventKind.RUNNING, offer.digest, command.id, message="already running")
            self.ack(command.id, True, "accepted")
            return
        transfer = self.transfer
        if transfer is not None and transfer.digest == offer.digest:
            transfer.cmd_ids.append(command.id)
            self.ack(command.id, True, "accepted")
            self._request_missing()
            return
        if offer.url is not None:
            self.ack(command.id, True, "accepted")
            self.event(
                EventKind.FAILED,
                offer.digest,
                command.id,
                reason=TransferReason.DOWNLOAD_FAILED.value,
                level=EventLevel.ERROR,
                message="the simulator takes bundles as MQTT chunks only",
            )
            return
        if transfer is not None:
            self._end_transfer()
            self._events(
                EventKind.FAILED,
                transfer.digest,
                transfer.cmd_ids,
                reason=TransferReason.CANCELLED.value,
                level=EventLevel.WARNING,
                message="another bundle was offered",
            )
        try:
            assembler = ChunkAssembler(
                self.workdir,
                Offer(
                    offer.digest,
                    offer.size,
                    offer.chunk_size,
                    offer.chunks,
                    offer.chunk_digests,
                ),
            )
        except TransferError as exc:
            self.ack(command.id, True, "accepted")
            self.event(
                EventKind.FAILED,
                offer.digest,
                command.id,
                reason=TransferReason.BAD_OFFER.value,
                level=EventLevel.ERROR,
                message=str(exc),
            )
            return
        half = max(1, offer.chunks // 2)
        k = self.knobs
        self.transfer = Transfer(
            assembler,
            offer.name,
            offer.version,
            [command.id],
            received=assembler.received,
            fail_at=half if self.rng.random() < k.fail_download else 0,
            offline_at=half if self.rng.random() < k.offline_mid_download else 0,
        )
        self.event(
            EventKind.DEPLOY_OFFERED,
            offer.digest,
            command.id,
            message=f"{offer.name}@{offer.version}, {offer.size} bytes",
        )
        self.ack(command.id, True, "accepted")
        self.client.subscribe(self.topics.bundle_chunks(offer.digest), qos=1)
        self._request_missing()
        self._arm_stall_check()

    def _on_rollback(self, cmd_id: str) -> None:
        if self.trial is not None and self.trial.timer is not None:
            self.trial.timer.cancel()
        self.trial = None
        left = self.current
        if self.previous is None or left is None:
            self.ack(cmd_id, False, "nothing_to_roll_back")
            return
        self._switch_back()
        self.event(
            EventKind.ROLLED_BACK,
            left.digest,
            cmd_id,
            reason=InstallReason.ROLLBACK_REQUESTED.value,
            message=f"back on {_label(self.current)}",
        )
        self.ack(cmd_id, True, "rolled_back")

    # ---- transfer --------------------------------------------------------------------------

    def _on_chunk(self, digest: str, payload: bytes | bytearray) -> None:
        self._tokens -= len(payload)
        transfer = self.transfer
        if transfer is None or transfer.digest != digest or not self.up:
            return
        if self.knobs.loss and self.rng.random() < self.knobs.loss:
            self.counters.dropped_chunks += 1
            return
        try:
            chunk = decode_chunk(payload)
            added = transfer.assembler.add(chunk.index, chunk.total, chunk.data)
        except (ProtocolError, TransferError) as exc:
            log.warning("event=sim_chunk_refused device=%s error=%r", self.id, str(exc))
            return
        if not added:
            return
        self.counters.chunks += 1
        self.counters.chunk_bytes += len(chunk.data)
        transfer.received += 1
        transfer.requests = 0
        transfer.last_progress = time.monotonic()
        if transfer.fail_at and transfer.received >= transfer.fail_at:
            self._give_up("simulated: the link gave out")
            return
        if transfer.offline_at and transfer.received >= transfer.offline_at:
            transfer.offline_at = 0
            self.go_offline(self.knobs.offline_s)
            return
        chunks = transfer.assembler.offer.chunks
        steps = transfer.received // transfer.assembler.offer.progress_step
        if steps != transfer.reported_steps:
            transfer.reported_steps = steps
            self.event(
                EventKind.DOWNLOADING,
                digest,
                transfer.cmd_id,
                progress=min(1.0, transfer.received / chunks),
            )
        if transfer.received >= chunks and transfer.assembler.complete:
            self._finish()

    def _request_missing(self) -> None:
        transfer = self.transfer
        if transfer is None or not self.online:
            return
        transfer.requests += 1
        transfer.last_progress = time.monotonic()
        missing = tuple(ChunkRange(start=a, end=b) for a, b in transfer.assembler.missing_ranges())
        if missing:
            self.counters.chunk_requests += 1
            self.event(
                EventKind.CHUNK_REQUEST,
                transfer.digest,
                transfer.cmd_id,
                missing=missing,
                message=f"attempt {transfer.requests}",
            )

    def _arm_stall_check(self) -> None:
        if self._stall_timer is not None:
            self._stall_timer.cancel()
        self._stall_timer = self.loop.call_later(
            self.knobs.chunk_request_timeout_s, self._check_stall
        )

    def _check_stall(self) -> None:
        self._stall_timer = None
        transfer = self.transfer
        if transfer is None:
            return
        k = self.knobs
        waited = time.monotonic() - transfer.last_progress
        backoff = k.chunk_request_timeout_s * min(8, 2 ** max(0, transfer.requests - 1))
        if self.online and self.up and waited >= backoff:
            if transfer.requests >= k.chunk_request_attempts:
                self._give_up(f"{transfer.requests} requests brought nothing for {waited:.1f} s")
                return
            self.event(
                EventKind.DOWNLOADING,
                transfer.digest,
                transfer.cmd_id,
                reason=TransferReason.STALLED.value,
                level=EventLevel.WARNING,
                message=f"no chunk for {waited:.1f} s, asking again",
            )
            self._request_missing()
        self._arm_stall_check()

    def _give_up(self, message: str) -> None:
        transfer = self.transfer
        if transfer is None:
            return
        self._end_transfer()
        transfer.assembler.discard()
        self._failed(transfer.digest, transfer.cmd_ids, TransferReason.STALLED.value, message)

    def _end_transfer(self) -> None:
        transfer, self.transfer = self.transfer, None
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        if transfer is not None and self.online:
            self.client.unsubscribe(self.topics.bundle_chunks(transfer.digest))

    def _finish(self) -> None:
        transfer = self.transfer
        if transfer is None:
            return
        self._end_transfer()
        digest, cmd_ids = transfer.digest, transfer.cmd_ids
        try:
            path = transfer.assembler.finish()  # this device's bytes against the offered sha256
        except TransferError as exc:
            self._failed(digest, cmd_ids, RefusalReason.HASH_MISMATCH.value, str(exc))
            return
        try:
            manifest = self.fleet.verifier.verify(path, digest)
        except BundleRefused as exc:
            self._failed(digest, cmd_ids, str(exc.reason), exc.detail)
            return
        finally:
            path.unlink(missing_ok=True)
        if self.rng.random() < self.knobs.fail_verify:
            self._failed(digest, cmd_ids, RefusalReason.BAD_SIGNATURE.value, "simulated refusal")
            return
        current = self.current
        if (
            current is not None
            and manifest.name == current.name
            and manifest.version < current.version
        ):
            message = f"version {manifest.version} is below the installed {current.version}"
            self._failed(digest, cmd_ids, RefusalReason.ROLLBACK.value, message)
            return
        self.counters.verified += 1
        bundle = SimBundle(
            manifest.name,
            manifest.version,
            digest,
            self.knobs.behaviour(manifest.name, manifest.version, digest),
        )
        self._events(EventKind.VERIFIED, digest, cmd_ids, message=_label(bundle))
        self._events(EventKind.INSTALLING, digest, cmd_ids)
        if self.rng.random() < self.knobs.fail_install:
            self._failed(digest, cmd_ids, InstallReason.INSTALL_ERROR.value, "simulated disk error")
            return
        if self.trial is not None:
            # a newer bundle during probation: the one on trial is superseded
            old = self.trial
            if old.timer is not None:
                old.timer.cancel()
            self.trial = None
            self._failed(
                old.bundle.digest, old.cmd_ids, InstallReason.SUPERSEDED.value, "a newer bundle"
            )
            self.current = self.previous
        self.previous, self.current = self.current, bundle
        self.trial = Trial(bundle, list(cmd_ids))
        self._begin_trial()

    # ---- probation -------------------------------------------------------------------------

    def _begin_trial(self) -> None:
        trial = self.trial
        if trial is None or self.current is None:
            return
        k = self.knobs
        self.activated_at = time.monotonic()
        self.publish_state()
        self._events(
            EventKind.PROBATION,
            trial.bundle.digest,
            trial.cmd_ids,
            message=f"attempt {trial.attempt} of {k.max_probation_attempts}, "
            f"{k.probation_s:g} s window",
        )
        if self.rng.random() < k.crash_in_probation:
            trial.timer = self.loop.call_later(k.probation_s / 2, self._crash)
        else:
            trial.timer = self.loop.call_later(k.probation_s, self._judge)

    def _judge(self) -> None:
        trial, self.trial = self.trial, None
        if trial is None:
            return
        digest = trial.bundle.digest
        if trial.bundle.behaviour.fails_probation or self.rng.random() < self.knobs.fail_probation:
            reason = InstallReason.INFERENCE_ERRORS.value
            self._failed(digest, trial.cmd_ids, reason, "simulated inference errors")
            self._revert(trial, reason)
            return
        self.counters.running += 1
        self._events(
            EventKind.RUNNING, digest, trial.cmd_ids, message=f"{_label(trial.bundle)}: healthy"
        )

    def _crash(self) -> None:
        """The agent dies during probation; it restarts after `restart_s` and counts it."""
        trial = self.trial
        if trial is None:
            return
        self.counters.crashes += 1
        self.up = False
        self.drop()
        self._seen.clear()  # a new process remembers no command ids
        self.loop.call_later(self.knobs.restart_s, self._restart)

    def _restart(self) -> None:
        self.up = True
        self.connect()
        trial = self.trial
        if trial is None:
            return
        trial.attempt += 1
        if trial.attempt > self.knobs.max_probation_attempts:
            self.trial = None
            reason = InstallReason.PROBATION_CRASHES.value
            message = f"the agent stopped {trial.attempt - 1} times with {_label(trial.bundle)}"
            self._failed(trial.bundle.digest, trial.cmd_ids, reason, message)
            self._revert(trial, reason)
            return
        self._begin_trial()

    def _revert(self, trial: Trial, reason: str) -> None:
        if self.previous is None:
            self._events(
                EventKind.ERROR,
                trial.bundle.digest,
                trial.cmd_ids,
                reason=InstallReason.NO_PREVIOUS_BUNDLE.value,
                level=EventLevel.WARNING,
                message="nothing intact to roll back to",
            )
            return
        self._switch_back()
        self.counters.rolled_back += 1
        self._events(
            EventKind.ROLLED_BACK,
            trial.bundle.digest,
            trial.cmd_ids,
            reason=reason,
            message=f"back on {_label(self.current)}",
        )

    def _switch_back(self) -> None:
        self.current, self.previous = self.previous, self.current
        self.activated_at = time.monotonic()
        self.publish_state()

    def _failed(self, digest: str, cmd_ids: list[str | None], reason: str, message: str) -> None:
        self.counters.failed += 1
        self.counters.failure(reason)
        self._events(
            EventKind.FAILED,
            digest,
            cmd_ids,
            reason=reason,
            level=EventLevel.ERROR,
            message=message[:4096],
        )

    # ---- outages ---------------------------------------------------------------------------

    def go_offline(self, seconds: float) -> None:
        """Drop off the broker for `seconds` (the persistent session keeps what it queues)."""
        self.counters.offline += 1
        self.up = False

        def back() -> None:
            self.up = True
            self.connect()

        # not from inside paho's message callback: paho would wait on itself
        self.loop.call_later(0.0, self.drop)
        self.loop.call_later(seconds, back)


def _label(bundle: SimBundle | None) -> str:
    return f"{bundle.name}@{bundle.version}" if bundle is not None else "nothing"


def _sock(sock: Any) -> socket.socket:
    """paho hands over its socket (plain or TLS): both are `socket.socket`."""
    if not isinstance(sock, socket.socket):
        raise TypeError(f"unexpected socket type {type(sock).__name__}")
    return sock
