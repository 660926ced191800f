"""Agent settings: a YAML file, overridden by EDGEFLEET_AGENT_* environment variables."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from agent.link.identity import EnrollmentSettings
from agent.link.outbox import OutboxSettings
from agent.link.session import BrokerSettings
from agent.pipeline.settings import CameraSettings
from agent.pipeline.snapshots import SnapshotSettings
from device_profiles.schema import HealthSource, RuntimeWorker
from protocol.events import RuntimeKey
from protocol.topics import validate_device_id


def _default_device_id() -> str:
    host = "".join(c if c.isalnum() else "-" for c in socket.gethostname().lower()).strip("-")
    return (host or "device")[:64].rjust(3, "0")


class AgentSettings(BaseSettings):
    """Everything an agent needs to know; each field has a default that works on one machine."""

    model_config = SettingsConfigDict(
        env_prefix="EDGEFLEET_AGENT_", env_nested_delimiter="__", extra="forbid"
    )

    device_id: str = Field(default_factory=_default_device_id, description="[a-z0-9-]{3,64}")
    data_dir: Path = Field(Path(".edgefleet/agent"), description="bundles, downloads, state")
    trust_path: Path | None = Field(
        None, description="release-key trust store (JSON); default data_dir/trust.json"
    )
    profile: str | None = Field(None, description="force a device profile instead of probing")
    runtime_workers: dict[RuntimeKey, RuntimeWorker] = Field(
        default_factory=dict,
        description="runtimes run in a worker process under another interpreter; added to, and "
        "winning over, the device profile's `workers` (local settings only: names a program)",
    )
    mqtt: BrokerSettings = Field(default_factory=BrokerSettings)
    enrollment: EnrollmentSettings = Field(
        default_factory=EnrollmentSettings,
        description="get this device's broker certificate from the controller on start",
    )
    cameras: list[CameraSettings] = Field(default_factory=list, description="video sources")
    runtime_threads: Annotated[int, Field(ge=1, le=64)] = Field(2, description="CPU threads")
    health_interval_s: Annotated[float, Field(gt=0, le=3600)] = Field(10.0, description="health")
    health_sources: list[HealthSource] | None = Field(
        None, description="device health sources to read; None: the device profile's list"
    )
    health_timeout_s: Annotated[float, Field(gt=0, le=30)] = Field(
        2.0, description="longest one health source may take before it is reported unavailable"
    )
    det_flush_s: Annotated[float, Field(gt=0, le=60)] = Field(
        0.5, description="longest a detection waits before its batch is published"
    )
    det_batch_max: Annotated[int, Field(ge=1, le=1000)] = Field(100, description="per batch")
    snapshots: SnapshotSettings = Field(
        default_factory=SnapshotSettings, description="best frames kept for snapshot requests"
    )
    chunk_request_timeout_s: Annotated[float, Field(gt=0, le=600)] = Field(
        5.0, description="ask again for missing chunks after this long without progress"
    )
    chunk_request_attempts: Annotated[int, Field(ge=1, le=100)] = Field(
        8, description="requests for missing chunks without progress before a download fails"
    )
    probation_s: Annotated[float, Field(ge=0, le=3600)] = Field(
        30.0, description="a new bundle must run healthy this long before it is committed"
    )
    max_probation_attempts: Annotated[int, Field(ge=1, le=100)] = Field(
        3, description="agent starts on a bundle still on probation before it is reverted"
    )
    outbox: OutboxSettings = Field(default_factory=OutboxSettings, description="outbox")
    controller_origin: str | None = Field(
        None,
        pattern=r"^https?://[A-Za-z0-9.:\[\]-]+/?$",
        description="scheme://host[:port] of the controller's API: bundle downloads and snapshot "
        "uploads go nowhere else; None: the broker's host, any port",
    )
    ca_file: Path | None = Field(
        None, description="fleet CA (PEM) that https servers must chain to; None: system CAs"
    )
    allowed_file_roots: list[Path] = Field(
        default_factory=list,
        description="folders whose video files set-config may name as a camera source",
    )
    max_cameras: Annotated[int, Field(ge=1, le=64)] = Field(
        8, description="most cameras a set-config may configure"
    )
    max_bundle_bytes: Annotated[int, Field(gt=0)] = Field(
        2 << 30, description="largest bundle an offer may announce"
    )
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING, ERROR")

    @field_validator("device_id")
    @classmethod
    def _device_id(cls, value: str) -> str:
        return validate_device_id(value)

    @property
    def trust_file(self) -> Path:
        return self.trust_path or self.data_dir / "trust.json"

    @classmethod
    def load(cls, path: Path | None = None, **overrides: Any) -> AgentSettings:
        """Read a YAML file (if given); environment variables win over it."""
        data: dict[str, Any] = {}
        if path is not None:
            loaded = yaml.safe_load(path.read_text()) or {}
            if not isinstance(loaded, dict):
                raise ValueError(f"{path}: settings must be a mapping")
            data.update(loaded)
        data.update(overrides)
        return cls(**data)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # the environment overrides the file, so a unit's Environment= wins over its YAML
        return env_settings, init_settings
