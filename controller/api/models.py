"""What the REST API accepts and answers: request bodies and response models of every router."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from controller.bundles.repository import BundleInfo
from protocol.events import DeploymentStatus


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
    id: int | None = Field(
        description="the history row's id; null for the latest sample when it is newer than "
        "the history's newest (the history keeps one sample per device per interval)"
    )
    device: str
    ts: float
    payload: dict[str, Any]
    received: float


class EventOut(_Out):
    id: str
    device: str
    kind: str = Field(description="an event kind, or `ack` for a device's answer to a command")
    level: str
    bundle: str | None
    cmd_id: str | None
    reason: str | None
    message: str
    ts: float
    received: float


class SummaryOut(BaseModel):
    devices: int
    devices_online: int
    detections: int
    frames: int = Field(description="frames processed, from each device's latest health")
    fps: float = Field(description="frames per second processed across the fleet")
    last_detection: DetectionOut | None


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
    status: DeploymentStatus
    reason: str
    created: float
    updated: float


class TrustPushOut(BaseModel):
    root_version: int
    commands: dict[str, str] = Field(description="device id -> trust-update command id")


class SnapshotIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    camera: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    track_id: int = Field(ge=0, description="the track id of a detection from this camera")


class SnapshotOut(BaseModel):
    snapshot_id: str
    cmd_id: str
    url: str = Field(description="where the JPEG is served once the agent has uploaded it")


class HealthzOut(BaseModel):
    status: str
    database: bool
    mqtt: bool


class LivezOut(BaseModel):
    status: Literal["ok"]


class ReadyzOut(BaseModel):
    status: Literal["ready", "not_ready"]
    database: bool
    mqtt: bool
    reasons: list[str] = Field(default_factory=list, description="why it is not ready")
