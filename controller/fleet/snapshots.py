"""Snapshots: ask an agent for a track's best frame and keep the JPEG it uploads.

A request records a pending snapshot id (a marker file under data_dir/snapshots/) and sends the
agent a Snapshot command whose `upload_url` is this controller's `POST|PUT
/api/snapshots/{snapshot_id}` (the routes live in controller/api/snapshots.py); the upload is
accepted once, only for a pending id, only if it is a JPEG no larger than the cap. Names on disk
come from the id the controller made, never from the client. Markers on disk (not memory) let
any replica sharing data_dir take the upload.
"""

from __future__ import annotations

import logging
import os
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from controller.auth.transfer import TransferPurpose, TransferTokens
from controller.db import Device
from controller.fleet.deployments import UnknownDevice
from controller.mqtt.commands import CommandSender
from protocol.messages import Snapshot

log = logging.getLogger(__name__)

JPEG_MAGIC = b"\xff\xd8\xff"
DEFAULT_MAX_SNAPSHOT_BYTES = 8 << 20
_ID_RE = re.compile(r"^[0-9a-f]{32}$")


class SnapshotRefused(Exception):
    """An upload the controller will not store; `status` is the HTTP status to answer."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class SnapshotStore:
    """JPEGs under one folder: `<id>.pending` while asked for, `<id>.jpg` once uploaded."""

    def __init__(
        self, root: Path, max_bytes: int = DEFAULT_MAX_SNAPSHOT_BYTES, pending_s: float = 600.0
    ) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.pending_s = pending_s

    def _path(self, snapshot_id: str, suffix: str) -> Path:
        if not _ID_RE.match(snapshot_id):
            raise SnapshotRefused(404, "no such snapshot")
        return self.root / f"{snapshot_id}{suffix}"

    def new(self) -> str:
        """Record a pending snapshot; returns its id."""
        self.root.mkdir(parents=True, exist_ok=True)
        snapshot_id = uuid.uuid4().hex
        self._path(snapshot_id, ".pending").write_text(f"{time.time():.3f}\n")
        return snapshot_id

    def jpeg(self, snapshot_id: str) -> Path | None:
        path = self._path(snapshot_id, ".jpg")
        return path if path.is_file() else None

    def pending(self, snapshot_id: str) -> bool:
        marker = self._path(snapshot_id, ".pending")
        try:
            return time.time() - marker.stat().st_mtime <= self.pending_s
        except FileNotFoundError:
            return False

    def store(self, snapshot_id: str, data: bytes) -> Path:
        """Keep an uploaded JPEG; raises SnapshotRefused (404 unknown, 409 done, 4xx garbage)."""
        if self.jpeg(snapshot_id) is not None:
            raise SnapshotRefused(409, "snapshot already uploaded")
        if not self.pending(snapshot_id):
            raise SnapshotRefused(404, "no snapshot pending under this id")
        if len(data) > self.max_bytes:
            raise SnapshotRefused(413, f"snapshot larger than {self.max_bytes} bytes")
        if not data.startswith(JPEG_MAGIC):
            raise SnapshotRefused(415, "not a JPEG")
        final = self._path(snapshot_id, ".jpg")
        partial = self._path(snapshot_id, ".part")
        partial.write_bytes(data)
        os.replace(partial, final)
        self._path(snapshot_id, ".pending").unlink(missing_ok=True)
        return final


class NoUploadUrl(LookupError):
    """The controller has no public URL that an agent could upload a snapshot to."""


@dataclass(frozen=True)
class RequestedSnapshot:
    """A snapshot asked for: its id, the command that asked, and where the JPEG will be."""

    snapshot_id: str
    cmd_id: str
    url: str


class SnapshotRequests:
    """Sends Snapshot commands whose upload URL points back at this controller."""

    def __init__(
        self,
        store: SnapshotStore,
        sessions: sessionmaker[Session],
        commands: CommandSender,
        public_url: Callable[[], str] | None,
        transfer_tokens: TransferTokens | None = None,
    ) -> None:
        self._store = store
        self._sessions = sessions
        self._commands = commands
        self._public_url = public_url
        self._transfer_tokens = transfer_tokens

    def request(self, device_id: str, camera: str, track_id: int) -> RequestedSnapshot:
        """Record a pending snapshot and ask the device for it.

        Raises UnknownDevice, NoUploadUrl, controller.mqtt.session.PublishError.
        """
        with self._sessions() as session:
            if session.get(Device, device_id) is None:
                raise UnknownDevice(device_id)
        if self._public_url is None:
            raise NoUploadUrl("the controller has no public URL for the agent to upload to")
        base = self._public_url().rstrip("/")
        snapshot_id = self._store.new()
        url = f"{base}/api/snapshots/{snapshot_id}"
        token = None
        if self._transfer_tokens is not None:
            token = self._transfer_tokens.issue(
                TransferPurpose.SNAPSHOT_UPLOAD, snapshot_id, device_id
            )
        command = Snapshot(
            device=device_id,
            camera=camera,
            track_id=track_id,
            upload_url=url,
            upload_token=token,
        )
        self._commands.send(command)
        log.info(
            "event=snapshot_requested device=%s camera=%s track=%d snapshot=%s cmd=%s",
            device_id,
            camera,
            track_id,
            snapshot_id,
            command.id,
        )
        return RequestedSnapshot(snapshot_id=snapshot_id, cmd_id=command.id, url=url)
