"""Snapshots: ask an agent for a track's best frame and keep the JPEG it uploads.

`POST /api/devices/{id}/snapshot` records a pending snapshot id (a marker file under
data_dir/snapshots/) and sends the agent a Snapshot command whose `upload_url` is this
controller's `POST|PUT /api/snapshots/{snapshot_id}`; the upload is accepted once, only for a
pending id, only if it is a JPEG no larger than the cap. Names on disk come from the id the
controller made, never from the client. Markers on disk (not memory) let any replica sharing
data_dir take the upload.
"""

from __future__ import annotations

import logging
import os
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session, sessionmaker

from controller.db import Device
from controller.mqtt.session import PublishError
from protocol.codec import encode
from protocol.messages import Snapshot
from protocol.topics import Topics

log = logging.getLogger(__name__)

JPEG_MAGIC = b"\xff\xd8\xff"
DEFAULT_MAX_SNAPSHOT_BYTES = 8 << 20
_ID_RE = re.compile(r"^[0-9a-f]{32}$")
SnapshotId = Annotated[str, PathParam(pattern=r"^[0-9a-f]{32}$")]


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


class SnapshotIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    camera: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    track_id: int = Field(ge=0, description="the track id of a detection from this camera")


class SnapshotOut(BaseModel):
    snapshot_id: str
    cmd_id: str
    url: str = Field(description="where the JPEG is served once the agent has uploaded it")


class SnapshotRequests:
    """Sends Snapshot commands whose upload URL points back at this controller."""

    def __init__(
        self,
        store: SnapshotStore,
        sessions: sessionmaker[Session],
        publish: Callable[[str, bytes], None],
        topics: Topics,
        public_url: Callable[[], str] | None,
    ) -> None:
        self.store = store
        self.sessions = sessions
        self._publish = publish
        self.topics = topics
        self.public_url = public_url


def snapshot_router(requests: SnapshotRequests) -> APIRouter:
    """The snapshot routes over `requests`."""
    router = APIRouter()
    store = requests.store

    @router.post("/api/devices/{device_id}/snapshot", status_code=202)
    def request_snapshot(device_id: str, body: SnapshotIn) -> SnapshotOut:
        with requests.sessions() as session:
            if session.get(Device, device_id) is None:
                raise HTTPException(404, f"no device {device_id!r}")
        if requests.public_url is None:
            raise HTTPException(409, "the controller has no public URL for the agent to upload to")
        base = requests.public_url().rstrip("/")
        snapshot_id = store.new()
        url = f"{base}/api/snapshots/{snapshot_id}"
        command = Snapshot(
            device=device_id, camera=body.camera, track_id=body.track_id, upload_url=url
        )
        try:
            requests._publish(requests.topics.cmd(device_id), encode(command))
        except PublishError as exc:
            raise HTTPException(503, f"the command could not be sent: {exc}") from None
        log.info(
            "event=snapshot_requested device=%s camera=%s track=%d snapshot=%s cmd=%s",
            device_id,
            body.camera,
            body.track_id,
            snapshot_id,
            command.id,
        )
        return SnapshotOut(snapshot_id=snapshot_id, cmd_id=command.id, url=url)

    async def upload(snapshot_id: SnapshotId, request: Request) -> dict[str, int]:
        data = bytearray()
        async for block in request.stream():
            data += block
            if len(data) > store.max_bytes:
                raise HTTPException(413, f"snapshot larger than {store.max_bytes} bytes")
        try:
            store.store(snapshot_id, bytes(data))
        except SnapshotRefused as exc:
            raise HTTPException(exc.status, exc.detail) from None
        return {"bytes": len(data)}

    router.add_api_route(
        "/api/snapshots/{snapshot_id}", upload, methods=["POST", "PUT"], status_code=201
    )

    @router.get("/api/snapshots/{snapshot_id}", response_class=FileResponse)
    def get_snapshot(snapshot_id: SnapshotId) -> FileResponse:
        path = store.jpeg(snapshot_id)
        if path is None:
            pending = store.pending(snapshot_id)
            raise HTTPException(404, "snapshot not uploaded yet" if pending else "no snapshot")
        return FileResponse(path, media_type="image/jpeg")

    return router
