"""Routes that change what devices run or trust: deployments, and root documents pushed to
every device."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session, sessionmaker

from controller.api.models import DeploymentIn, DeploymentOut, TrustPushOut
from controller.api.params import Limit
from controller.bundles.repository import UnknownBundle
from controller.fleet.deployments import DeploymentService, HttpTransportUnavailable, UnknownDevice
from controller.fleet.trust_push import push_roots
from controller.mqtt.commands import CommandSender
from controller.mqtt.session import PublishError
from ota.errors import RootRefused


def deployments_router(
    deployments: DeploymentService,
    sessions: sessionmaker[Session],
    commands: CommandSender,
    trust_path: Path | None,
) -> APIRouter:
    """Deployment and trust-push routes; a root in `trust_path` is stepped forward by a push."""
    router = APIRouter()

    @router.post("/api/deployments", status_code=202)
    def create_deployment(body: DeploymentIn) -> DeploymentOut:
        try:
            info = deployments.deploy(body.device, body.bundle, transport=body.transport)
        except HttpTransportUnavailable as exc:
            raise HTTPException(409, str(exc)) from None
        except UnknownDevice as exc:
            raise HTTPException(404, f"no device {exc.args[0]!r}") from None
        except UnknownBundle as exc:
            raise HTTPException(404, f"no bundle {exc.args[0]!r}") from None
        except PublishError as exc:
            raise HTTPException(503, f"the command could not be sent: {exc}") from None
        return DeploymentOut.model_validate(info)

    @router.post("/api/trust", status_code=202)
    async def push_trust(request: Request) -> TrustPushOut:
        """Body: a root document, or {"roots": [...]}; sent to every device once checked."""
        body = await request.body()
        try:
            pushed = await run_in_threadpool(push_roots, sessions, commands, body, trust_path)
        except RootRefused as exc:
            raise HTTPException(422, {"reason": exc.reason.value, "detail": exc.detail}) from None
        except PublishError as exc:
            raise HTTPException(503, f"the command could not be sent: {exc}") from None
        return TrustPushOut(root_version=pushed.root_version, commands=pushed.commands)

    @router.get("/api/deployments")
    def list_deployments(limit: Limit = 100, device: str | None = None) -> list[DeploymentOut]:
        return [DeploymentOut.model_validate(d) for d in deployments.list(device, limit)]

    return router
