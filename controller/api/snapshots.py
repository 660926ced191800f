"""Routes for snapshots: ask a device for a track's best frame, take its JPEG upload, serve it.

The upload is device-facing: the agent shows the token its Snapshot command carried (bound to
the snapshot id), and it is accepted once, only for an id this controller made and still waits
for, and only as a JPEG under the size cap.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse

from controller.api.models import SnapshotIn, SnapshotOut
from controller.api.security import DEVICE, device_grant
from controller.auth.transfer import TransferPurpose
from controller.fleet.deployments import UnknownDevice
from controller.fleet.snapshots import NoUploadUrl, SnapshotRefused, SnapshotRequests, SnapshotStore
from controller.mqtt.session import PublishError

SnapshotId = Annotated[str, PathParam(pattern=r"^[0-9a-f]{32}$")]


def snapshots_router(requests: SnapshotRequests, store: SnapshotStore) -> APIRouter:
    """The snapshot routes: requests go out through `requests`, uploads land in `store`."""
    router = APIRouter()

    @router.post("/api/devices/{device_id}/snapshot", status_code=202)
    def request_snapshot(device_id: str, body: SnapshotIn) -> SnapshotOut:
        try:
            asked = requests.request(device_id, body.camera, body.track_id)
        except UnknownDevice:
            raise HTTPException(404, f"no device {device_id!r}") from None
        except NoUploadUrl as exc:
            raise HTTPException(409, str(exc)) from None
        except PublishError as exc:
            raise HTTPException(503, f"the command could not be sent: {exc}") from None
        return SnapshotOut(snapshot_id=asked.snapshot_id, cmd_id=asked.cmd_id, url=asked.url)

    async def upload(snapshot_id: SnapshotId, request: Request) -> dict[str, int]:
        # who, which id and how big are settled before a byte of the body is read
        device_grant(request, TransferPurpose.SNAPSHOT_UPLOAD, snapshot_id)
        if store.jpeg(snapshot_id) is not None:
            raise HTTPException(409, "snapshot already uploaded")
        if not store.pending(snapshot_id):
            raise HTTPException(404, "no snapshot pending under this id")
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > store.max_bytes:
            raise HTTPException(413, f"snapshot larger than {store.max_bytes} bytes")
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

    # device-facing: the agent shows the token the Snapshot command carried; one operation
    # per method, so the API schema names each once
    for method in ("POST", "PUT"):
        router.add_api_route(
            "/api/snapshots/{snapshot_id}",
            upload,
            methods=[method],
            status_code=201,
            tags=[DEVICE],
            operation_id=f"upload_snapshot_{method.lower()}",
        )

    @router.get("/api/snapshots/{snapshot_id}", response_class=FileResponse)
    def get_snapshot(snapshot_id: SnapshotId) -> FileResponse:
        path = store.jpeg(snapshot_id)
        if path is None:
            pending = store.pending(snapshot_id)
            raise HTTPException(404, "snapshot not uploaded yet" if pending else "no snapshot")
        return FileResponse(path, media_type="image/jpeg")

    return router
