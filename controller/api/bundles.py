"""Routes for bundles: upload (verified before it is kept), list, describe, and the file itself
with Range support so agent downloads can resume."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse

from controller.api.models import BundleOut
from controller.api.security import DEVICE, device_or_viewer
from controller.auth.transfer import TransferPurpose
from controller.bundles.repository import BundleRepository, TrustStoreUnavailable
from ota.errors import BundleRefused


def bundles_router(bundles: BundleRepository, max_upload_bytes: int) -> APIRouter:
    """The bundle routes over `bundles`; uploads over `max_upload_bytes` are refused (413)."""
    router = APIRouter()

    @router.get("/api/bundles")
    def list_bundles() -> list[BundleOut]:
        return [BundleOut.of(b) for b in bundles.list()]

    @router.post("/api/bundles", status_code=201)
    async def upload_bundle(request: Request) -> BundleOut:
        target = bundles.new_upload()
        try:
            size = 0
            with target.open("wb") as out:
                async for block in request.stream():
                    size += len(block)
                    if size > max_upload_bytes:
                        raise HTTPException(413, f"bundle larger than {max_upload_bytes} bytes")
                    out.write(block)
            if size == 0:
                raise HTTPException(400, "empty upload: send the bundle file as the request body")
            info = await run_in_threadpool(bundles.add_file, target, move=True)
        except BundleRefused as exc:
            raise HTTPException(422, {"reason": exc.reason.value, "detail": exc.detail}) from None
        except TrustStoreUnavailable as exc:
            raise HTTPException(503, str(exc)) from None
        finally:
            target.unlink(missing_ok=True)
        return BundleOut.of(info)

    @router.get("/api/bundles/{digest}")
    def get_bundle(digest: str) -> BundleOut:
        info = bundles.get(digest)
        if info is None:
            raise HTTPException(404, f"no bundle {digest!r}")
        return BundleOut.of(info)

    # device-facing: an agent shows the token of its deploy offer; an operator a viewer login
    @router.get("/api/bundles/{digest}/file", response_class=FileResponse, tags=[DEVICE])
    def bundle_file(digest: str, request: Request) -> FileResponse:
        """The bundle's bytes; honours Range requests, so downloads can resume."""
        device_or_viewer(request, TransferPurpose.BUNDLE_FILE, digest)
        if bundles.get(digest) is None:
            raise HTTPException(404, f"no bundle {digest!r}")
        return FileResponse(bundles.path(digest), media_type="application/x-tar")

    return router
