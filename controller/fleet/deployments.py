"""Deployments: send a bundle to a device and follow it to running, or to why not.

A deployment publishes a Deploy command with the bundle's chunk layout; the agent then asks
for the chunks it lacks with `chunk_request` events, which reach us through the ingest and are
served by the ChunkServer. Large bundles (or a request for `transport="http"`) are offered
with a URL of the API's range-serving bundle endpoint instead, and the agent downloads them.
Acks and progress events move the deployment's status forward.
The pieces it builds on (BundleRepository, Publisher, ChunkServer) are importable from here too.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from controller.bundles.chunks import ChunkServer
from controller.bundles.repository import (
    BundleInfo,
    BundleRepository,
    UnknownBundle,
)
from controller.db import Bundle, Deployment, Device
from controller.mqtt.records import Accepted
from controller.mqtt.session import Publisher, PublishError
from protocol.codec import encode
from protocol.messages import Ack, Deploy, Event
from protocol.topics import Topics

log = logging.getLogger(__name__)

STATUSES = (
    "pending",
    "sent",
    "accepted",
    "downloading",
    "verified",
    "installing",
    "probation",
    "running",
    "failed",
    "rolled_back",
)
_RANK = {status: rank for rank, status in enumerate(STATUSES)}
_EVENT_STATUS = {
    "deploy_offered": "accepted",
    "downloading": "downloading",
    "chunk_request": "downloading",
    "verified": "verified",
    "installing": "installing",
    "probation": "probation",
    "running": "running",
    "failed": "failed",
    "rolled_back": "rolled_back",
}


Transport = Literal["auto", "mqtt", "http"]
"""How a deployment's bytes travel; `auto` picks HTTP for bundles at or over the threshold."""

DEFAULT_HTTP_TRANSFER_BYTES = 8 << 20


class UnknownDevice(LookupError):
    """No device with that id has ever reported."""


class HttpTransportUnavailable(ValueError):
    """HTTP delivery was asked for, but the controller has no public URL to offer."""


@dataclass(frozen=True)
class DeploymentInfo:
    id: str
    device: str
    bundle: str
    cmd_id: str
    status: str
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
            row.status,
            row.reason,
            row.created,
            row.updated,
        )


class DeploymentService:
    """Starts deployments and follows them through the events and acks agents send back."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        store: BundleRepository,
        publisher: Publisher,
        chunks: ChunkServer,
        topics: Topics,
        clock: Callable[[], float] = time.time,
        *,
        public_url: Callable[[], str] | None = None,
        http_transfer_bytes: int = DEFAULT_HTTP_TRANSFER_BYTES,
    ) -> None:
        self.sessions = sessions
        self.store = store
        self.publisher = publisher
        self.chunks = chunks
        self.topics = topics
        self._clock = clock
        # a callable, since the API's port is known only once it listens
        self.public_url = public_url
        self.http_transfer_bytes = http_transfer_bytes
        self.chunk_requests_refused = 0

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
        deployment is then `failed`).
        """
        now = self._clock()
        with self.sessions.begin() as session:
            if session.get(Device, device_id) is None:
                raise UnknownDevice(device_id)
            row = session.get(Bundle, digest)
            if row is None:
                raise UnknownBundle(digest)
            info = BundleInfo.of(row)
            offer = info.offer(self.bundle_url(info, transport))
            command = Deploy(device=device_id, bundle=offer)
            session.add(
                Deployment(
                    id=uuid.uuid4().hex,
                    device=device_id,
                    bundle=digest,
                    cmd_id=command.id,
                    status="pending",
                    reason="",
                    created=now,
                    updated=now,
                )
            )
        # committed first, so an ack that races back finds the deployment
        try:
            self.publisher.publish(self.topics.cmd(device_id), encode(command), timeout=10.0)
        except PublishError as exc:
            self._set_status(command.id, "failed", f"command not sent: {exc}", force=True)
            raise
        self._set_status(command.id, "sent", "")
        log.info(
            "event=deploy_sent device=%s bundle=%s cmd=%s transport=%s",
            device_id,
            digest[:12],
            command.id,
            "http" if offer.url else "mqtt",
        )
        found = self.get_by_cmd(command.id)
        assert found is not None
        return found

    def list(self, device: str | None = None, limit: int = 100) -> list[DeploymentInfo]:
        query = select(Deployment).order_by(Deployment.created.desc()).limit(limit)
        if device:
            query = query.where(Deployment.device == device)
        with self.sessions() as session:
            return [DeploymentInfo.of(row) for row in session.scalars(query)]

    def get_by_cmd(self, cmd_id: str) -> DeploymentInfo | None:
        with self.sessions() as session:
            row = session.scalar(select(Deployment).where(Deployment.cmd_id == cmd_id))
            return DeploymentInfo.of(row) if row else None

    def _set_status(self, cmd_id: str, status: str, reason: str, *, force: bool = False) -> None:
        with self.sessions.begin() as session:
            row = session.scalar(select(Deployment).where(Deployment.cmd_id == cmd_id))
            if row is not None:
                _advance(row, status, reason, self._clock(), force=force)

    # -- IngestHook --

    def in_transaction(self, session: Session, batch: Sequence[Accepted]) -> None:
        now = self._clock()
        for item in batch:
            msg = item.message
            if isinstance(msg, Ack):
                row = session.scalar(select(Deployment).where(Deployment.cmd_id == msg.cmd_id))
                if row is not None:
                    status = "accepted" if msg.ok else "failed"
                    _advance(row, status, "" if msg.ok else (msg.detail or msg.result), now)
            elif isinstance(msg, Event) and msg.kind in _EVENT_STATUS and msg.bundle:
                row = _deployment_for(session, msg.device, msg.bundle, msg.cmd_id)
                if row is not None:
                    _advance(row, _EVENT_STATUS[msg.kind], msg.reason or "", now)

    def after_commit(self, batch: Sequence[Accepted]) -> None:
        for item in batch:
            msg = item.message
            if isinstance(msg, Event) and msg.kind == "chunk_request" and msg.bundle:
                self._serve(msg)

    def _serve(self, event: Event) -> None:
        assert event.bundle is not None
        with self.sessions() as session:
            wanted = _deployment_for(session, event.device, event.bundle, None) is not None
        bundle = self.store.get(event.bundle) if wanted else None
        if bundle is None:
            # only bundles deployed to the asking device are sent, whatever it asks for
            self.chunk_requests_refused += 1
            log.warning(
                "event=chunk_request_refused device=%s bundle=%s", event.device, event.bundle[:12]
            )
            return
        self.chunks.request(bundle, [(r.start, r.end) for r in event.missing])


def _deployment_for(
    session: Session, device: str, digest: str, cmd_id: str | None
) -> Deployment | None:
    query = select(Deployment).where(Deployment.device == device, Deployment.bundle == digest)
    if cmd_id:
        row = session.scalar(query.where(Deployment.cmd_id == cmd_id))
        if row is not None:
            return row
    return session.scalar(query.order_by(Deployment.created.desc()).limit(1))


def _advance(row: Deployment, status: str, reason: str, now: float, force: bool = False) -> None:
    """Move a deployment forward; redelivered or late messages never move it back."""
    if force or _RANK[status] > _RANK.get(row.status, -1):
        row.status = status
        row.reason = reason[:1000]
        row.updated = now
