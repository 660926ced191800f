"""The REST API: a FastAPI app built from explicit dependencies (no module-level state)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from controller.bundles.repository import (
    BundleInfo,
    BundleRepository,
    TrustStoreUnavailable,
    UnknownBundle,
)
from controller.db import DetectionRow, Device, EventRow, HealthRow
from controller.fleet.deployments import DeploymentService, HttpTransportUnavailable, UnknownDevice
from controller.fleet.snapshots import SnapshotRequests, snapshot_router
from controller.fleet.trust_push import TrustPushOut, push_roots
from controller.mqtt.ingest import IngestStats
from controller.mqtt.session import PublishError
from ota.errors import BundleRefused, RootRefused


@dataclass(frozen=True)
class ApiContext:
    """What the API needs; built by the Controller, or by a test."""

    sessions: sessionmaker[Session]
    bundles: BundleRepository
    deployer: DeploymentService
    stats: IngestStats
    max_upload_bytes: int
    mqtt_ready: Callable[[], bool] = lambda: True
    # the controller's own trust file; a root there is stepped forward by POST /api/trust
    trust_path: Path | None = None
    # snapshot requests and uploads (POST /api/devices/{id}/snapshot, /api/snapshots/{id})
    snapshots: SnapshotRequests | None = None


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class DeviceOut(_Out):
    id: str
    online: bool
    status: str
    profile: str
    agent_version: str
    runtimes: list[dict[str, Any]]
    cameras: list[str]
    active_name: str | None
    active_version: int | None
    active_digest: str | None
    active_runtime: str | None
    active_reason: str | None
    first_seen: float
    last_seen: float


class DetectionOut(_Out):
    id: str
    device: str
    camera: str
    track_id: int | None
    label: str
    score: float
    x1: float
    y1: float
    x2: float
    y2: float
    ts: float
    model: str
    runtime: str
    snapshot: str | None
    received: float


class HealthOut(_Out):
    id: int
    device: str
    ts: float
    payload: dict[str, Any]
    received: float


class EventOut(_Out):
    id: str
    device: str
    kind: str
    level: str
    bundle: str | None
    cmd_id: str | None
    reason: str | None
    message: str
    ts: float
    received: float


class BundleOut(_Out):
    digest: str
    name: str
    version: int
    size: int
    chunk_size: int
    chunks: int
    created: float
    variants: list[str] = Field(description="runtime/precision of each variant")
    manifest: dict[str, Any]

    @classmethod
    def of(cls, info: BundleInfo) -> BundleOut:
        variants = [
            f"{v.get('runtime')}/{v.get('precision', 'fp32')}"
            for v in info.manifest.get("variants", [])
        ]
        return cls(
            digest=info.digest,
            name=info.name,
            version=info.version,
            size=info.size,
            chunk_size=info.chunk_size,
            chunks=info.chunks,
            created=info.created,
            variants=variants,
            manifest=info.manifest,
        )


class DeploymentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device: str = Field(pattern=r"^[a-z0-9-]{3,64}$")
    bundle: str = Field(pattern=r"^[0-9a-f]{64}$", description="bundle digest")
    transport: Literal["auto", "mqtt", "http"] = Field(
        "auto", description="auto: HTTP range download for large bundles, MQTT chunks otherwise"
    )


class DeploymentOut(_Out):
    id: str
    device: str
    bundle: str
    cmd_id: str
    status: str
    reason: str
    created: float
    updated: float


class HealthzOut(BaseModel):
    status: str
    database: bool
    mqtt: bool


class SummaryOut(BaseModel):
    devices: int
    devices_online: int
    detections: int
    frames: int = Field(description="frames processed, from each device's latest health")
    fps: float = Field(description="frames per second processed across the fleet")
    last_detection: DetectionOut | None


def _session(request: Request) -> Iterator[Session]:
    """A database session from the app's own context, per request."""
    context: ApiContext = request.app.state.ctx
    with context.sessions() as session:
        yield session


Db = Annotated[Session, Depends(_session)]
Limit = Annotated[int, Query(ge=1, le=1000)]


def _family(name: str, kind: str, doc: str, samples: dict[str, float]) -> list[str]:
    """One metric family in the Prometheus text format; sample keys are label strings."""
    lines = [f"# HELP {name} {doc}", f"# TYPE {name} {kind}"]
    lines += [f"{name}{labels} {value:g}" for labels, value in sorted(samples.items())]
    return lines


def _labelled(label: str, counts: dict[str, int]) -> dict[str, float]:
    return {f'{{{label}="{key}"}}': float(value) for key, value in counts.items()}


def _metrics_text(stats: dict[str, Any], devices: dict[str, int], extra: list[str]) -> str:
    lines = [
        *_family("edgefleet_ingest_received_total", "counter",
                 "MQTT messages received by the ingest.", {"": stats["received"]}),
        *_family("edgefleet_ingest_stored_total", "counter",
                 "Messages committed, by channel.", _labelled("kind", stats["stored"])),
        *_family("edgefleet_ingest_rejected_total", "counter",
                 "Messages dropped as invalid, by error code.",
                 _labelled("code", stats["rejected"])),
        *_family("edgefleet_ingest_batches_total", "counter",
                 "Batches committed.", {"": stats["batches"]}),
        *_family("edgefleet_ingest_commit_failures_total", "counter",
                 "Failed commit attempts (each is retried).", {"": stats["commit_failures"]}),
        *_family("edgefleet_ingest_last_commit_ms", "gauge",
                 "Duration of the last batch commit.", {"": stats["last_commit_ms"]}),
        *_family("edgefleet_devices_online", "gauge",
                 "Devices whose last state is online.", {"": devices["online"]}),
        *_family("edgefleet_devices", "gauge",
                 "Devices known to the controller.", {"": devices["total"]}),
        *extra,
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


def create_app(ctx: ApiContext) -> FastAPI:
    """The controller's REST API over `ctx`."""
    app = FastAPI(title="edgefleet controller", version="1")
    app.state.ctx = ctx
    if ctx.snapshots is not None:
        app.include_router(snapshot_router(ctx.snapshots))

    @app.get("/healthz")
    def healthz(db: Db, response: Response) -> HealthzOut:
        try:
            db.execute(text("SELECT 1"))
            database = True
        except SQLAlchemyError:
            database = False
        mqtt = ctx.mqtt_ready()
        if not (database and mqtt):
            response.status_code = 503
        return HealthzOut(
            status="ok" if database and mqtt else "degraded", database=database, mqtt=mqtt
        )

    @app.get("/api/devices")
    def list_devices(db: Db) -> list[DeviceOut]:
        rows = db.scalars(select(Device).order_by(Device.id))
        return [DeviceOut.model_validate(r) for r in rows]

    @app.get("/api/devices/{device_id}")
    def get_device(device_id: str, db: Db) -> DeviceOut:
        row = db.get(Device, device_id)
        if row is None:
            raise HTTPException(404, f"no device {device_id!r}")
        return DeviceOut.model_validate(row)

    @app.get("/api/detections")
    def list_detections(
        db: Db, limit: Limit = 50, device: str | None = None, label: str | None = None
    ) -> list[DetectionOut]:
        query = select(DetectionRow).order_by(DetectionRow.ts.desc()).limit(limit)
        if device:
            query = query.where(DetectionRow.device == device)
        if label:
            query = query.where(DetectionRow.label == label)
        return [DetectionOut.model_validate(r) for r in db.scalars(query)]

    @app.get("/api/health/{device_id}")
    def list_health(device_id: str, db: Db, limit: Limit = 20) -> list[HealthOut]:
        query = (
            select(HealthRow)
            .where(HealthRow.device == device_id)
            .order_by(HealthRow.ts.desc())
            .limit(limit)
        )
        return [HealthOut.model_validate(r) for r in db.scalars(query)]

    @app.get("/api/events")
    def list_events(
        db: Db, limit: Limit = 50, device: str | None = None, kind: str | None = None
    ) -> list[EventOut]:
        query = select(EventRow).order_by(EventRow.ts.desc()).limit(limit)
        if device:
            query = query.where(EventRow.device == device)
        if kind:
            query = query.where(EventRow.kind == kind)
        return [EventOut.model_validate(r) for r in db.scalars(query)]

    @app.get("/api/bundles")
    def list_bundles() -> list[BundleOut]:
        return [BundleOut.of(b) for b in ctx.bundles.list()]

    @app.post("/api/bundles", status_code=201)
    async def upload_bundle(request: Request) -> BundleOut:
        target = ctx.bundles.new_upload()
        try:
            size = 0
            with target.open("wb") as out:
                async for block in request.stream():
                    size += len(block)
                    if size > ctx.max_upload_bytes:
                        raise HTTPException(413, f"bundle larger than {ctx.max_upload_bytes} bytes")
                    out.write(block)
            if size == 0:
                raise HTTPException(400, "empty upload: send the bundle file as the request body")
            info = await run_in_threadpool(ctx.bundles.add_file, target, move=True)
        except BundleRefused as exc:
            raise HTTPException(422, {"reason": exc.reason.value, "detail": exc.detail}) from None
        except TrustStoreUnavailable as exc:
            raise HTTPException(503, str(exc)) from None
        finally:
            target.unlink(missing_ok=True)
        return BundleOut.of(info)

    @app.get("/api/bundles/{digest}")
    def get_bundle(digest: str) -> BundleOut:
        info = ctx.bundles.get(digest)
        if info is None:
            raise HTTPException(404, f"no bundle {digest!r}")
        return BundleOut.of(info)

    @app.get("/api/bundles/{digest}/file", response_class=FileResponse)
    def bundle_file(digest: str) -> FileResponse:
        """The bundle's bytes; honours Range requests, so downloads can resume."""
        if ctx.bundles.get(digest) is None:
            raise HTTPException(404, f"no bundle {digest!r}")
        return FileResponse(ctx.bundles.path(digest), media_type="application/x-tar")

    @app.post("/api/deployments", status_code=202)
    def create_deployment(body: DeploymentIn) -> DeploymentOut:
        try:
            info = ctx.deployer.deploy(body.device, body.bundle, transport=body.transport)
        except HttpTransportUnavailable as exc:
            raise HTTPException(409, str(exc)) from None
        except (UnknownDevice, UnknownBundle) as exc:
            what = "device" if isinstance(exc, UnknownDevice) else "bundle"
            raise HTTPException(404, f"no {what} {exc.args[0]!r}") from None
        except PublishError as exc:
            raise HTTPException(503, f"the command could not be sent: {exc}") from None
        return DeploymentOut.model_validate(info)

    @app.post("/api/trust", status_code=202)
    async def push_trust(request: Request) -> TrustPushOut:
        """Body: a root document, or {"roots": [...]}; sent to every device once checked."""
        body = await request.body()
        try:
            return await run_in_threadpool(push_roots, ctx.deployer, body, ctx.trust_path)
        except RootRefused as exc:
            raise HTTPException(422, {"reason": exc.reason.value, "detail": exc.detail}) from None
        except PublishError as exc:
            raise HTTPException(503, f"the command could not be sent: {exc}") from None

    @app.get("/api/deployments")
    def list_deployments(limit: Limit = 100, device: str | None = None) -> list[DeploymentOut]:
        return [DeploymentOut.model_validate(d) for d in ctx.deployer.list(device, limit)]

    @app.get("/api/summary")
    def summary(db: Db) -> SummaryOut:
        total = db.scalar(select(func.count()).select_from(Device)) or 0
        online = db.scalar(select(func.count()).select_from(Device).where(Device.online)) or 0
        detections = db.scalar(select(func.count()).select_from(DetectionRow)) or 0
        frames, fps = 0, 0.0
        # one query for the newest health of every device (ix_health_device_ts), not one per
        # device: this page is polled, and a fleet has thousands of devices
        newest = (
            select(HealthRow.device, func.max(HealthRow.ts).label("ts"))
            .group_by(HealthRow.device)
            .subquery()
        )
        latest_rows = db.scalars(
            select(HealthRow).join(
                newest, (HealthRow.device == newest.c.device) & (HealthRow.ts == newest.c.ts)
            )
        )
        seen: set[str] = set()
        for latest in latest_rows:
            if latest.device in seen:
                continue  # two samples with the same newest time: count the device once
            seen.add(latest.device)
            for camera in latest.payload.get("cameras", []):
                frames += int(camera.get("frames_processed", 0))
                fps += float(camera.get("fps_processed", 0.0))
        last = db.scalar(select(DetectionRow).order_by(DetectionRow.ts.desc()).limit(1))
        return SummaryOut(
            devices=total,
            devices_online=online,
            detections=detections,
            frames=frames,
            fps=fps,
            last_detection=DetectionOut.model_validate(last) if last else None,
        )

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics(db: Db) -> PlainTextResponse:
        total = db.scalar(select(func.count()).select_from(Device)) or 0
        online = db.scalar(select(func.count()).select_from(Device).where(Device.online)) or 0
        publisher, chunks = ctx.deployer.publisher, ctx.deployer.chunks
        extra = [
            *_family("edgefleet_chunks_sent_total", "counter",
                     "Bundle chunks published.", {"": chunks.chunks_sent}),
            *_family("edgefleet_mqtt_published_total", "counter",
                     "QoS 1 messages handed to the broker.", {"": publisher.published}),
            *_family("edgefleet_mqtt_inflight", "gauge",
                     "QoS 1 publishes not yet acknowledged.", {"": publisher.inflight}),
        ]  # fmt: skip
        body = _metrics_text(ctx.stats.snapshot(), {"online": online, "total": total}, extra)
        return PlainTextResponse(body, media_type="text/plain; version=0.0.4")

    return app
