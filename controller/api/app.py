"""The REST API's factory: `create_app(ApiContext)` builds a FastAPI app from explicit
dependencies (no module-level state) and includes one router per area."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Depends, FastAPI
from prometheus_client import CollectorRegistry
from sqlalchemy.orm import Session, sessionmaker
from starlette.middleware.trustedhost import TrustedHostMiddleware

from controller.api.auth import auth_router
from controller.api.bundles import bundles_router
from controller.api.deployments import deployments_router
from controller.api.devices import devices_router
from controller.api.enrollment import enrollment_device_router, enrollment_operator_router
from controller.api.groups import groups_router
from controller.api.metrics import (
    DEFAULT_MAX_DEVICES,
    ControllerCollector,
    HttpInstruments,
    HttpMetrics,
)
from controller.api.monitoring import monitoring_router
from controller.api.rollouts import rollouts_router
from controller.api.security import (
    AuditTrail,
    AuthContext,
    BodyLimit,
    allowed_hosts,
    authorize,
)
from controller.api.snapshots import snapshots_router
from controller.auth.enrollment import EnrollmentService
from controller.auth.ratelimit import LoginLimiter
from controller.auth.transfer import TransferTokens, load_or_create_key
from controller.bundles.chunks import ChunkServer
from controller.bundles.repository import BundleRepository
from controller.fleet.deployments import DeploymentService
from controller.fleet.snapshots import SnapshotRequests, SnapshotStore
from controller.mqtt.commands import CommandSender
from controller.mqtt.ingest import IngestStats
from controller.mqtt.session import Publisher
from controller.rollouts.desired import Reconciler
from controller.rollouts.engine import RolloutEngine
from controller.settings import AuthSettings


@dataclass(frozen=True)
class ApiContext:
    """What the API needs; built by the Controller, or by a test."""

    sessions: sessionmaker[Session]
    bundles: BundleRepository
    deployments: DeploymentService
    commands: CommandSender
    # read by /metrics
    stats: IngestStats
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
    # operators' authentication and the request guards (always on)
    auth_settings: AuthSettings = field(default_factory=AuthSettings)
    # signs and checks device transfer tokens; None: made from the key in the database
    transfer_tokens: TransferTokens | None = None
    # the URL agents reach the API by: its host is a trusted Host header value
    public_url: str | None = None
    # device enrollment (CA, tokens, approval, revocation); the routes exist only when given
    enrollment: EnrollmentService | None = None
    # rollouts, groups, tags, targets and device commands; the routes exist only when given
    rollouts: RolloutEngine | None = None
    reconciler: Reconciler | None = None
    # most devices given per-device gauges in /metrics (the rest are counted as dropped)
    metrics_max_devices: int = DEFAULT_MAX_DEVICES


def create_app(ctx: ApiContext) -> FastAPI:
    """The controller's REST API over `ctx`."""
    # every route needs an operator unless its tags say otherwise (controller.api.security)
    app = FastAPI(title="edgefleet controller", version="1", dependencies=[Depends(authorize)])
    # read per request by controller.api.params
    app.state.sessions = ctx.sessions
    _guard(app, ctx)
    _instrument(app, ctx)
    app.include_router(auth_router())
    if ctx.snapshot_requests is not None and ctx.snapshots is not None:
        app.include_router(snapshots_router(ctx.snapshot_requests, ctx.snapshots))
    app.include_router(monitoring_router(app.state.metrics, ctx.sessions, ctx.mqtt_ready))
    app.include_router(devices_router())
    app.include_router(bundles_router(ctx.bundles, ctx.max_upload_bytes))
    app.include_router(
        deployments_router(ctx.deployments, ctx.sessions, ctx.commands, ctx.trust_path)
    )
    if ctx.rollouts is not None and ctx.reconciler is not None:
        app.include_router(rollouts_router(ctx.rollouts))
        app.include_router(groups_router(ctx.reconciler, ctx.commands))
    if ctx.enrollment is not None:
        app.include_router(enrollment_operator_router(ctx.enrollment))
        # device-facing (tagged DEVICE): a one-time token, approval or the CSR's key decides
        app.include_router(enrollment_device_router(ctx.enrollment))
    return app


def _guard(app: FastAPI, ctx: ApiContext) -> None:
    """Authentication state, then the middlewares, outermost last: trusted Host header, the
    audit trail of mutating requests, body caps checked before a body is read."""
    settings = ctx.auth_settings
    transfer = ctx.transfer_tokens or TransferTokens(
        load_or_create_key(ctx.sessions), settings.transfer_token_ttl_s
    )
    app.state.auth = AuthContext(
        sessions=ctx.sessions,
        settings=settings,
        transfer=transfer,
        limiter=LoginLimiter(
            settings.login_failures_per_user,
            settings.login_failures_per_client,
            settings.login_window_s,
        ),
    )
    snapshot_cap = ctx.snapshots.max_bytes if ctx.snapshots is not None else None

    def upload_caps(method: str, path: str) -> int | None:
        if method == "POST" and path == "/api/bundles":
            return ctx.max_upload_bytes
        if snapshot_cap is not None and path.startswith("/api/snapshots/"):
            return snapshot_cap
        return None

    app.add_middleware(BodyLimit, default=settings.max_body_bytes, rules=[upload_caps])
    app.add_middleware(AuditTrail, sessions=ctx.sessions)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts(settings, ctx.public_url))


def _instrument(app: FastAPI, ctx: ApiContext) -> None:
    """The app's own metrics registry (`app.state.metrics`): the controller's state read at
    scrape time, and HTTP requests counted by the outermost middleware."""
    registry = CollectorRegistry()
    registry.register(
        ControllerCollector(
            ctx.stats,
            ctx.publisher,
            ctx.chunks,
            ctx.sessions,
            max_devices=ctx.metrics_max_devices,
        )
    )
    app.state.metrics = registry
    app.add_middleware(HttpMetrics, instruments=HttpInstruments(registry))
