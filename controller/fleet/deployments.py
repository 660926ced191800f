"""Deployments: send a bundle to a device and follow it to running, or to why not.

A deployment sends a Deploy command with the bundle's chunk layout; the agent then asks for the
chunks it lacks with `chunk_request` events, which reach us through the ingest and are served by
the ChunkServer. Large bundles (or a request for `transport="http"`) are offered with a URL of
the API's range-serving bundle endpoint instead, and the agent downloads them. Acks and progress
events move the deployment's status forward, in the order of `DeploymentStatus`.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session, sessionmaker

from controller.auth.transfer import TransferPurpose, TransferTokens
from controller.bundles.chunks import ChunkServer
from controller.bundles.repository import BundleInfo, BundleRepository, UnknownBundle
from controller.db import Bundle, Deployment, Device
from controller.mqtt.commands import CommandSender
from controller.mqtt.records import Accepted
from controller.mqtt.session import PublishError
from ota.transfer import chunk_digests
from protocol.events import CommandRefusal, DeploymentStatus, EventKind
from protocol.messages import MAX_CHUNK_DIGESTS, Ack, BundleOffer, ChunkRange, Deploy, Event

log = logging.getLogger(__name__)

# a status ranks by its place in the enum: later statuses are further along
_RANK = {status: rank for rank, status in enumerate(DeploymentStatus)}
_EVENT_STATUS = {
    EventKind.DEPLOY_OFFERED: DeploymentStatus.ACCEPTED,
    EventKind.DOWNLOADING: DeploymentStatus.DOWNLOADING,
    EventKind.CHUNK_REQUEST: DeploymentStatus.DOWNLOADING,
    EventKind.VERIFIED: DeploymentStatus.VERIFIED,
    EventKind.INSTALLING: DeploymentStatus.INSTALLING,
    EventKind.PROBATION: DeploymentStatus.PROBATION,
    EventKind.RUNNING: DeploymentStatus.RUNNING,
    EventKind.FAILED: DeploymentStatus.FAILED,
    EventKind.ROLLED_BACK: DeploymentStatus.ROLLED_BACK,
}

# events after which a device reads no more of the bundle's chunks
_READ_DONE = frozenset(
    k.value
    for k in (
        EventKind.VERIFIED,
        EventKind.INSTALLING,
        EventKind.PROBATION,
        EventKind.RUNNING,
        EventKind.FAILED,
        EventKind.ROLLED_BACK,
    )
)

Transport = Literal["auto", "mqtt", "http"]
"""How a deployment's bytes travel; `auto` picks HTTP for bundles at or over the threshold."""

DEFAULT_HTTP_TRANSFER_BYTES = 8 << 20
# per-chunk digest lists kept for the bundles deployed most recently
_DIGEST_CACHE_SIZE = 32


class UnknownDevice(LookupError):
    """No device with that id has ever reported."""


class UnknownDeployment(LookupError):
    """No deployment was made by that command id."""


class HttpTransportUnavailable(ValueError):
    """HTTP delivery was asked for, but the controller has no public URL to offer."""


@dataclass(frozen=True)
class DeploymentInfo:
    id: str
    device: str
    bundle: str
    cmd_id: str
    status: DeploymentStatus
    reason: str
    created: float
    updated: float

    @classmethod
    def of(cls, row: Deployment) -> DeploymentInfo:
        return cls(
            row.id,
            row.device,
            row.bundle,
            row.cmd_id,
            DeploymentStatus(row.status),
            row.reason,
            row.created,
            row.updated,
        )


class DeploymentService:
    """Starts deployments and follows them through the events and acks agents send back."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        bundles: BundleRepository,
        commands: CommandSender,
        chunks: ChunkServer,
        clock: Callable[[], float] = time.time,
        *,
        public_url: Callable[[], str] | None = None,
        http_transfer_bytes: int = DEFAULT_HTTP_TRANSFER_BYTES,
        transfer_tokens: TransferTokens | None = None,
    ) -> None:
        self._sessions = sessions
        self._bundles = bundles
        self._commands = commands
        self._chunks = chunks
        self._clock = clock
        # a callable, since the API's port is known only once it listens
        self.public_url = public_url
        self.http_transfer_bytes = http_transfer_bytes
        # signs the per-offer token an agent shows to download over HTTP
        self._transfer_tokens = transfer_tokens
        self.chunk_requests_refused = 0
        self._chunk_digests: dict[str, tuple[str, ...]] = {}

    def bundle_url(self, info: BundleInfo, transport: Transport) -> str | None:
        """The URL to offer for `info`, or None to send it as MQTT chunks.

        Raises HttpTransportUnavailable when `transport` is http and no public URL is set.
        """
        if transport == "mqtt":
            return None
        if transport == "auto" and (
            info.size < self.http_transfer_bytes or self.public_url is None
        ):
            return None
        if self.public_url is None:
            raise HttpTransportUnavailable("the controller has no public URL to offer")
        return f"{self.public_url().rstrip('/')}/api/bundles/{info.digest}/file"

    def deploy(self, device_id: str, digest: str, transport: Transport = "auto") -> DeploymentInfo:
        """Record a deployment and send the Deploy command.

        Raises UnknownDevice, UnknownBundle, HttpTransportUnavailable, PublishError (the
        deployment is then `failed`), UnknownDeployment (its row vanished meanwhile).
        """
        with self._sessions.begin() as session:
            command = self.record(session, device_id, digest, transport)
        # committed first, so an ack that races back finds the deployment
        errors = self.dispatch([command])
        if command.id in errors:
            raise errors[command.id]
        found = self.get_by_cmd(command.id)
        if found is None:
            raise UnknownDeployment(command.id)
        return found

    def record(
        self, session: Session, device_id: str, digest: str, transport: Transport = "auto"
    ) -> Deploy:
        """Add a pending deployment to `session`; returns its Deploy command, to `dispatch`
        once the session committed.

        Raises UnknownDevice, UnknownBundle, HttpTransportUnavailable."""
        now = self._clock()
        if session.get(Device, device_id) is None:
            raise UnknownDevice(device_id)
        row = session.get(Bundle, digest)
        if row is None:
            raise UnknownBundle(digest)
        info = BundleInfo.of(row)
        offer = self._with_chunk_digests(info, info.offer(self.bundle_url(info, transport)))
        if offer.url is not None and self._transfer_tokens is not None:
            token = self._transfer_tokens.issue(TransferPurpose.BUNDLE_FILE, info.digest, device_id)
            offer = offer.model_copy(update={"token": token})
        command = Deploy(device=device_id, bundle=offer)
        session.add(
            Deployment(
                id=uuid.uuid4().hex,
                device=device_id,
                bundle=digest,
                cmd_id=command.id,
                status=DeploymentStatus.PENDING.value,
                reason="",
                created=now,
                updated=now,
            )
        )
        return command

    def dispatch(self, commands: Sequence[Deploy]) -> dict[str, PublishError]:
        """Send recorded deployments' commands, then mark them `sent` (or `failed`, with the
        reason) in one transaction; returns the errors by command id."""
        errors: dict[str, PublishError] = {}
        for command in commands:
            try:
                self._commands.send(command)
            except PublishError as exc:
                errors[command.id] = exc
                continue
            log.info(
                "event=deploy_sent device=%s bundle=%s cmd=%s transport=%s",
                command.device,
                command.bundle.digest[:12],
                command.id,
                "http" if command.bundle.url else "mqtt",
            )
        if not commands:
            return errors
        now = self._clock()
        with self._sessions.begin() as session:
            rows = session.scalars(
                select(Deployment).where(Deployment.cmd_id.in_([c.id for c in commands]))
            )
            for row in rows:
                error = errors.get(row.cmd_id)
                if error is None:
                    _advance(row, DeploymentStatus.SENT, "", now)
                else:
                    _advance(
                        row, DeploymentStatus.FAILED, f"command not sent: {error}", now, force=True
                    )
        return errors

    def _with_chunk_digests(self, info: BundleInfo, offer: BundleOffer) -> BundleOffer:
        """The offer with each chunk's sha256, so an agent drops a forged chunk alone; only
        for MQTT offers of at most MAX_CHUNK_DIGESTS chunks (the rest are checked whole)."""
        if offer.url is not None or info.chunks > MAX_CHUNK_DIGESTS:
            return offer
        digests = self._chunk_digests.get(info.digest)
        if digests is None:
            digests = chunk_digests(self._bundles.path(info.digest), info.chunk_size)
            if len(self._chunk_digests) >= _DIGEST_CACHE_SIZE:
                self._chunk_digests.pop(next(iter(self._chunk_digests)))
            self._chunk_digests[info.digest] = digests
        return BundleOffer.model_validate({**offer.model_dump(), "chunk_digests": digests})

    def list(self, device: str | None = None, limit: int = 100) -> list[DeploymentInfo]:
        query = select(Deployment).order_by(Deployment.created.desc()).limit(limit)
        if device:
            query = query.where(Deployment.device == device)
        with self._sessions() as session:
            return [DeploymentInfo.of(row) for row in session.scalars(query)]

    def get_by_cmd(self, cmd_id: str) -> DeploymentInfo | None:
        with self._sessions() as session:
            row = session.scalar(select(Deployment).where(Deployment.cmd_id == cmd_id))
            return DeploymentInfo.of(row) if row else None

    # -- IngestHook --

    def in_transaction(self, session: Session, batch: Sequence[Accepted]) -> None:
        now = self._clock()
        acks: list[Ack] = []
        events: list[tuple[Event, DeploymentStatus]] = []
        for item in batch:
            msg = item.message
            if isinstance(msg, Ack):
                acks.append(msg)
            elif isinstance(msg, Event) and msg.bundle:
                status = _event_status(msg.kind)
                if status is not None:
                    events.append((msg, status))
        if not acks and not events:
            return
        # the batch's deployments in a query or two, not one per message: during a rollout
        # every reading device reports progress each 256 KiB
        by_cmd = _deployments_by_command(session, {a.cmd_id for a in acks})
        by_pair = _deployments_by_bundle(session, {(e.device, e.bundle or "") for e, _ in events})
        for msg in acks:
            row = by_cmd.get(msg.cmd_id)
            if row is None or _is_replay_answer(msg):
                # a "replayed" answer is the device refusing a second copy of a command
                # it already handled (a QoS 1 redelivery): the first answer stands
                continue
            if msg.ok:
                _advance(row, DeploymentStatus.ACCEPTED, "", now)
            else:
                _advance(row, DeploymentStatus.FAILED, msg.detail or msg.result, now)
        for event, status in events:
            row = _pick(by_pair.get((event.device, event.bundle or ""), []), event.cmd_id)
            if row is not None:
                _advance(row, status, event.reason or "", now)

    def after_commit(self, batch: Sequence[Accepted]) -> None:
        for item in batch:
            msg = item.message
            if not isinstance(msg, Event) or not msg.bundle:
                continue
            if msg.kind == EventKind.CHUNK_REQUEST:
                self._serve(msg.device, msg.bundle, msg.missing)
            elif msg.kind == EventKind.DOWNLOADING:
                if msg.progress is not None:
                    # what a reader has read paces the passes it reads (the reader window)
                    self._chunks.progress(msg.device, msg.bundle, msg.progress)
            elif msg.kind in _READ_DONE:
                self._chunks.finished(msg.device, msg.bundle)

    def _serve(self, device: str, digest: str, missing: Sequence[ChunkRange]) -> None:
        with self._sessions() as session:
            wanted = _deployment_for(session, device, digest, None) is not None
        bundle = self._bundles.get(digest) if wanted else None
        if bundle is None:
            # only bundles deployed to the asking device are sent, whatever it asks for
            self.chunk_requests_refused += 1
            log.warning("event=chunk_request_refused device=%s bundle=%s", device, digest[:12])
            return
        self._chunks.request(bundle, [(r.start, r.end) for r in missing], device=device)


def _event_status(kind: str) -> DeploymentStatus | None:
    """The deployment status an event kind moves to, or None for kinds that move nothing."""
    try:
        return _EVENT_STATUS.get(EventKind(kind))
    except ValueError:  # a kind newer than this controller
        return None


def _rank(status: str) -> int:
    try:
        return _RANK[DeploymentStatus(status)]
    except ValueError:  # a value this controller does not know ranks below all it does
        return -1


def _deployment_for(
    session: Session, device: str, digest: str, cmd_id: str | None
) -> Deployment | None:
    query = select(Deployment).where(Deployment.device == device, Deployment.bundle == digest)
    if cmd_id:
        row = session.scalar(query.where(Deployment.cmd_id == cmd_id))
        if row is not None:
            return row
    return session.scalar(query.order_by(Deployment.created.desc()).limit(1))


LOOKUP_CHUNK = 400
"""Keys per IN list: well under SQLite's limit on bound parameters."""


def _deployments_by_command(session: Session, cmd_ids: set[str]) -> dict[str, Deployment]:
    found: dict[str, Deployment] = {}
    keys = sorted(cmd_ids)
    for at in range(0, len(keys), LOOKUP_CHUNK):
        part = keys[at : at + LOOKUP_CHUNK]
        for row in session.scalars(select(Deployment).where(Deployment.cmd_id.in_(part))):
            found[row.cmd_id] = row
    return found


def _deployments_by_bundle(
    session: Session, pairs: set[tuple[str, str]]
) -> dict[tuple[str, str], list[Deployment]]:
    """Every deployment of each (device, bundle digest), newest first."""
    found: dict[tuple[str, str], list[Deployment]] = {}
    keys = sorted(pairs)
    for at in range(0, len(keys), LOOKUP_CHUNK):
        part = keys[at : at + LOOKUP_CHUNK]
        query = (
            select(Deployment)
            .where(tuple_(Deployment.device, Deployment.bundle).in_(part))
            .order_by(Deployment.created.desc())
        )
        for row in session.scalars(query):
            found.setdefault((row.device, row.bundle), []).append(row)
    return found


def _pick(rows: Sequence[Deployment], cmd_id: str | None) -> Deployment | None:
    """The deployment an event is about: the one of its command, else the newest
    (what `_deployment_for` answers, from rows already read)."""
    if cmd_id:
        for row in rows:
            if row.cmd_id == cmd_id:
                return row
    return rows[0] if rows else None


def _advance(
    row: Deployment, status: DeploymentStatus, reason: str, now: float, force: bool = False
) -> None:
    """Move a deployment forward; redelivered or late messages never move it back."""
    if force or _rank(status) > _rank(row.status):
        row.status = status.value
        row.reason = reason[:1000]
        row.updated = now


def _is_replay_answer(ack: Ack) -> bool:
    return not ack.ok and ack.result == CommandRefusal.REPLAYED.value
