"""The REST API's factory: `create_app(ApiContext)` builds a FastAPI app from explicit
dependencies (no module-level state) and includes one router per area."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI
from sqlalchemy.orm import Session, sessionmaker

from controller.api.bundles import bundles_router
from controller.api.deployments import deployments_router
from controller.api.devices import devices_router
from controller.api.monitoring import monitoring_router
from controller.api.snapshots import snapshots_router
from controller.bundles.chunks import ChunkServer
from controller.bundles.repository import BundleRepository
from controller.fleet.deployments import DeploymentService
from controller.fleet.snapshots import SnapshotRequests, SnapshotStore
from controller.mqtt.commands import CommandSender
from controller.mqtt.ingest import IngestStats
from controller.mqtt.session import Publisher


@dataclass(frozen=True)
class ApiContext:
    """What the API needs; built by the Controller, or by a test."""

    sessions: sessionmaker[Session]
    bundles: BundleRepository
    deployments: DeploymentService
    commands: CommandSender
    stats: IngestStats
    # read by /metrics
    publisher: Publisher
    chunks: ChunkServer
    max_upload_bytes: int
    mqtt_ready: Callable[[], bool] = lambda: True
    # the controller's own trust file; a root there is stepped forward by POST /api/trust
    trust_path: Path | None = None
    # snapshot requests and uploads (POST /api/devices/{id}/snapshot, /api/snapshots/{id});
    # the routes exist only when both are given
    snapshot_requests: SnapshotRequests | None = None
    snapshots: SnapshotStore | None = None


def create_app(ctx: ApiContext) -> FastAPI:
    """The controller's REST API over `ctx`."""
    app = FastAPI(title="edgefleet controller", version="1")
    # read per request by controller.api.params
    app.state.sessions = ctx.sessions
    if ctx.snapshot_requests is not None and ctx.snapshots is not None:
        app.include_router(snapshots_router(ctx.snapshot_requests, ctx.snapshots))
    app.include_router(monitoring_router(ctx.stats, ctx.publisher, ctx.chunks, ctx.mqtt_ready))
    app.include_router(devices_router())
    app.include_router(bundles_router(ctx.bundles, ctx.max_upload_bytes))
    app.include_router(
        deployments_router(ctx.deployments, ctx.sessions, ctx.commands, ctx.trust_path)
    )
    return app
