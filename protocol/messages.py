"""Pydantic models of every message on the wire (DESIGN §2).

Every message carries `v` (schema version "MAJOR.MINOR"), `type`, `id`, `ts` (unix seconds)
and `device`. A receiver accepts any minor version of its major version and ignores fields it
does not know, so a newer agent can talk to an older controller within one major version.
"""

from __future__ import annotations

import os
import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from protocol.errors import InvalidDeviceId
from protocol.events import DeviceStatus, EventKind, EventLevel
from protocol.topics import validate_device_id

SCHEMA_MAJOR = 1
SCHEMA_VERSION = f"{SCHEMA_MAJOR}.0"

Score = Annotated[float, Field(ge=0.0, le=1.0)]
Unit = Annotated[float, Field(ge=0.0, le=1.0)]
NonNeg = Annotated[float, Field(ge=0.0)]
# no NUL character: PostgreSQL stores none in text, and refuses JSON paths through one
ShortText = Annotated[str, Field(max_length=256, pattern=r"^[^\x00]*$")]
Text = Annotated[str, Field(max_length=4096, pattern=r"^[^\x00]*$")]
Digest = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Ident = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
# http(s) only, no whitespace or control characters, bounded so a command stays small
HttpUrlText = Annotated[str, Field(max_length=2048, pattern=r"^https?://[^\s\x00-\x1f]+$")]
# a per-command credential for a device-facing HTTP endpoint (bundle download, snapshot upload)
TransferToken = Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9._-]+$")]
TRANSFER_TOKEN_HEADER = "X-Edgefleet-Transfer-Token"  # noqa: S105 - a header name, not a secret


def new_id() -> str:
    """32 hex digits laid out as a UUIDv7 (RFC 9562): 48 bits of unix milliseconds, the version,
    then 74 random bits. Ids made later sort later, so the rows a controller keys by them
    (detections, events, health) are appended at the end of their index instead of landing on
    a random page of it: at 10,000 devices that decides whether the index's hot pages fit in
    the database's cache. Uniqueness is the random part's (2**74 per millisecond)."""
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    value = value & ~(0xF << 76) | 0x7 << 76  # version 7
    value = value & ~(0x3 << 62) | 0x2 << 62  # variant 10
    return f"{value:032x}"


class WireModel(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, frozen=True, strict=True)


class Envelope(WireModel):
    v: str = SCHEMA_VERSION
    id: Annotated[str, Field(min_length=8, max_length=64, pattern=r"^[A-Za-z0-9-]+$")] = Field(
        default_factory=new_id
    )
    ts: Annotated[float, Field(ge=0.0)] = Field(default_factory=time.time)
    device: str

    @field_validator("v")
    @classmethod
    def _major_version(cls, value: str) -> str:
        major, _, minor = value.partition(".")
        if not (major.isdigit() and minor.isdigit()):
            raise ValueError("v must look like MAJOR.MINOR")
        if int(major) != SCHEMA_MAJOR:
            # its own error type, so the codec tells it apart without reading the message
            raise PydanticCustomError(
                "unsupported_version",
                "unsupported schema major version {major} (speaking {speaking})",
                {"major": major, "speaking": SCHEMA_MAJOR},
            )
        return value

    # before the type check, so a device that is not even a string is an invalid device id too
    @field_validator("device", mode="before")
    @classmethod
    def _device(cls, value: object) -> str:
        try:
            return validate_device_id(value)
        except InvalidDeviceId as exc:
            # passed as a value, not as the template: the message holds braces of its own
            raise PydanticCustomError(
                "invalid_device_id", "{detail}", {"detail": str(exc)}
            ) from exc


# ---- agent → controller -------------------------------------------------------------------


class RuntimeInfo(WireModel):
    key: Ident
    available: bool
    reason: Text = ""


class ActiveBundle(WireModel):
    name: Ident
    version: Annotated[int, Field(ge=1)]
    digest: Digest
    runtime: Ident
    reason: Text = ""


class State(Envelope):
    """Retained per device; `offline` is also the Last Will."""

    type: Literal["state"] = "state"
    status: Annotated[DeviceStatus, Field(strict=False)]
    agent_version: ShortText = ""
    profile: ShortText = ""
    runtimes: Annotated[tuple[RuntimeInfo, ...], Field(max_length=32)] = ()
    active: ActiveBundle | None = None
    cameras: Annotated[tuple[Ident, ...], Field(max_length=64)] = ()
    # declared in the agent's settings; operators' tags live on the controller beside them
    tags: Annotated[tuple[Ident, ...], Field(max_length=32)] = ()


class CameraHealth(WireModel):
    camera: Ident
    connected: bool = True
    fps_in: NonNeg = 0.0
    fps_processed: NonNeg = 0.0
    frames_in: Annotated[int, Field(ge=0)] = 0
    frames_processed: Annotated[int, Field(ge=0)] = 0
    frames_skipped: Annotated[int, Field(ge=0)] = 0
    skipped_busy: Annotated[int, Field(ge=0)] = 0
    skipped_motion: Annotated[int, Field(ge=0)] = 0
    inference_ms: NonNeg = 0.0
    latency_ms: NonNeg = 0.0
    reconnects: Annotated[int, Field(ge=0)] = 0
    last_error: ShortText = ""
    since: NonNeg | None = Field(None, description="unix time `connected` last changed")


class AcceleratorHealth(WireModel):
    """One accelerator (or the memory controller feeding it); None: the source does not say."""

    name: Ident
    kind: Literal["gpu", "tpu", "vpu", "npu", "emc"]
    load_percent: NonNeg | None = None
    clock_mhz: NonNeg | None = None
    memory_used_mb: NonNeg | None = None
    memory_total_mb: NonNeg | None = None
    temperature_c: float | None = None
    power_w: NonNeg | None = None


class BundleStats(WireModel):
    """How the active bundle has run since it was activated (its probation window, then
    running): what rollout gates compare with the previous bundle on the same device."""

    digest: Digest
    frames: Annotated[int, Field(ge=0)] = 0
    window_s: NonNeg = Field(0.0, description="seconds since the bundle was activated")
    fps: NonNeg = Field(0.0, description="frames processed per second, all cameras")
    infer_ms_p95: NonNeg | None = Field(None, description="over the most recent frames")
    det_rate: NonNeg = Field(0.0, description="detections per processed frame")
    mean_score: Score | None = Field(None, description="mean score of those detections")


class RuntimeWorkerHealth(WireModel):
    """One runtime worker process: whether it runs, and how often it died and was restarted."""

    runtime: Ident
    # any short name, not only a RuntimeWorkerState: a newer agent may report a state an older
    # controller does not know, and its health must still be read
    state: Ident
    pid: Annotated[int, Field(ge=1)] | None = None
    crashes: Annotated[int, Field(ge=0)] = 0
    restarts: Annotated[int, Field(ge=0)] = 0
    last_crash: ShortText = Field("", description="why the worker last died, cut short")


class Health(Envelope):
    type: Literal["health"] = "health"
    uptime_s: NonNeg = 0.0
    cpu_percent: NonNeg | None = None
    load1: NonNeg | None = None
    mem_used_mb: NonNeg | None = None
    mem_total_mb: NonNeg | None = None
    disk_free_mb: NonNeg | None = None
    temperatures_c: Annotated[dict[ShortText, float], Field(max_length=64)] = Field(
        default_factory=dict
    )
    cameras: Annotated[tuple[CameraHealth, ...], Field(max_length=64)] = ()
    outbox_depth: Annotated[int, Field(ge=0)] = 0
    outbox_dropped: Annotated[int, Field(ge=0)] = 0
    mqtt_reconnects: Annotated[int, Field(ge=0)] = 0
    cpu_cores_percent: Annotated[tuple[NonNeg, ...], Field(max_length=256)] = ()
    accelerators: Annotated[tuple[AcceleratorHealth, ...], Field(max_length=16)] = ()
    throttling: Annotated[dict[ShortText, bool], Field(max_length=32)] = Field(
        default_factory=dict, description="decoded throttling flags, e.g. under_voltage_now"
    )
    power_w: Annotated[dict[ShortText, NonNeg], Field(max_length=32)] = Field(
        default_factory=dict, description="power rails, watts now"
    )
    unavailable: Annotated[dict[ShortText, ShortText], Field(max_length=64)] = Field(
        default_factory=dict, description="health sources that could not be read, and why"
    )
    bundle_stats: BundleStats | None = None
    # runtimes that run in worker processes; in-process runtimes are not listed
    runtime_workers: Annotated[tuple[RuntimeWorkerHealth, ...], Field(max_length=16)] = ()


class Box(WireModel):
    """Corners normalised to the frame: 0..1 from the top-left."""

    x1: Unit
    y1: Unit
    x2: Unit
    y2: Unit


class Detection(WireModel):
    id: Annotated[str, Field(min_length=8, max_length=64, pattern=r"^[A-Za-z0-9-]+$")] = Field(
        default_factory=new_id
    )
    camera: Ident
    track_id: Annotated[int, Field(ge=0)] | None = None
    # a track's first sighting, a material change, or its end; older agents sent one
    # detection per frame, which reads best as an update
    event: Literal["start", "update", "end"] = "update"
    label: ShortText
    score: Score
    box: Box
    ts: Annotated[float, Field(ge=0.0)]
    snapshot: ShortText | None = None


class DetectionBatch(Envelope):
    type: Literal["det"] = "det"
    model: ShortText = ""
    runtime: ShortText = ""
    detections: Annotated[tuple[Detection, ...], Field(max_length=1000)]


class ChunkRange(WireModel):
    """Chunks `start` to `end` inclusive."""

    start: Annotated[int, Field(ge=0)]
    end: Annotated[int, Field(ge=0)]


class Event(Envelope):
    type: Literal["evt"] = "evt"
    # not strict: a sender may give the plain value ("running"); anything else is still refused
    kind: Annotated[EventKind, Field(strict=False)]
    level: Annotated[EventLevel, Field(strict=False)] = EventLevel.INFO
    bundle: Digest | None = None
    cmd_id: ShortText | None = None
    reason: ShortText | None = None
    message: Text = ""
    progress: Unit | None = None
    missing: Annotated[tuple[ChunkRange, ...], Field(max_length=1024)] = ()


class Ack(Envelope):
    type: Literal["ack"] = "ack"
    cmd_id: ShortText
    ok: bool
    result: ShortText = ""
    detail: Text = ""


# ---- controller → agent -------------------------------------------------------------------


# per-chunk digests travel in the offer up to this many chunks (about 68 KiB of command);
# a bundle cut into more goes without them and is checked whole, or is offered over HTTP
MAX_CHUNK_DIGESTS = 1024


class BundleOffer(WireModel):
    """Where and how a bundle's bytes travel; the chunks come on the bundle's own topic."""

    name: Ident
    version: Annotated[int, Field(ge=1)]
    digest: Digest
    size: Annotated[int, Field(gt=0)]
    chunk_size: Annotated[int, Field(gt=0, le=1 << 20)]
    chunks: Annotated[int, Field(gt=0)]
    url: HttpUrlText | None = Field(
        None, description="when set, fetch the bytes over HTTP range requests instead of chunks"
    )
    chunk_digests: Annotated[tuple[Digest, ...], Field(max_length=MAX_CHUNK_DIGESTS)] = Field(
        (), description="sha256 of each chunk in order, so a bad chunk is dropped alone"
    )
    token: TransferToken | None = Field(
        None, description=f"with `url`: sent back in the {TRANSFER_TOKEN_HEADER} header"
    )


class CommandSignature(WireModel):
    """One command key's Ed25519 signature over the command's canonical bytes (`ota.commands`)."""

    keyid: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    sig: Annotated[str, Field(pattern=r"^[0-9a-f]{128}$")]


class CommandEnvelope(Envelope):
    """The envelope of every command: `exp` and `sigs` make it a signed, short-lived order for
    one device; the agent refuses it without them (see `ota.commands`)."""

    exp: Annotated[float, Field(ge=0.0)] | None = Field(
        None, description="unix time after which the device refuses the command"
    )
    sigs: Annotated[tuple[CommandSignature, ...], Field(max_length=8)] = Field(
        (), description="command-key signatures over everything else in the command"
    )


class Deploy(CommandEnvelope):
    type: Literal["deploy"] = "deploy"
    bundle: BundleOffer


class Rollback(CommandEnvelope):
    type: Literal["rollback"] = "rollback"


class RestartPipeline(CommandEnvelope):
    type: Literal["restart-pipeline"] = "restart-pipeline"


class SetConfig(CommandEnvelope):
    """A partial agent settings document; the agent validates it and answers in its ack."""

    type: Literal["set-config"] = "set-config"
    config: Annotated[dict[ShortText, Any], Field(max_length=64)]


class TrustUpdate(CommandEnvelope):
    """New root documents for the device's trust, oldest first, each the next version."""

    type: Literal["trust-update"] = "trust-update"
    # JSON text as signed; the agent checks the signatures, so nothing is normalised here
    roots: Annotated[
        tuple[Annotated[str, Field(min_length=2, max_length=64 << 10)], ...],
        Field(min_length=1, max_length=3),
    ]


class Snapshot(CommandEnvelope):
    """A JPEG of a track's best frame: uploaded with an HTTP POST to `upload_url`, or, without
    one, published as chunks on the device's `snap` topic (protocol.codec.encode_snapshot_chunk).
    The ack's result says which: `uploaded`, `sent`, `not_found`, `upload_failed`."""

    type: Literal["snapshot"] = "snapshot"
    camera: Ident
    track_id: Annotated[int, Field(ge=0)]
    upload_url: HttpUrlText | None = None
    # with `upload_url`: sent back in the TRANSFER_TOKEN_HEADER header of the upload
    upload_token: TransferToken | None = None


Command = Annotated[
    Deploy | Rollback | RestartPipeline | TrustUpdate | SetConfig | Snapshot,
    Field(discriminator="type"),
]
AgentMessage = State | Health | DetectionBatch | Event | Ack
Message = AgentMessage | Deploy | Rollback | RestartPipeline | TrustUpdate | SetConfig | Snapshot
