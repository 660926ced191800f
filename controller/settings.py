"""Controller settings: pydantic-settings with the `EDGEFLEET_` prefix and `__` nesting."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from protocol.topics import DEFAULT_PREFIX


def _default_client_id() -> str:
    # Stable across restarts (the broker keeps our persistent session under this id) and
    # distinct per host, so replicas on different machines do not take over each other.
    host = "".join(c for c in socket.gethostname().lower() if c.isalnum() or c == "-")
    return f"edgefleet-controller-{host[:32] or 'local'}"


class MqttSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = Field("127.0.0.1", description="MQTT broker host")
    port: int = Field(1883, ge=1, le=65535, description="MQTT broker port")
    username: str | None = Field(None, description="broker user name; none for anonymous")
    password: str | None = Field(None, description="broker password")
    topic_prefix: str = Field(DEFAULT_PREFIX, description="prefix of every edgefleet topic")
    client_id: str = Field(
        default_factory=_default_client_id,
        description="stable id of the ingest session; QoS 1 messages wait under it while down",
    )
    share_group: str = Field(
        "",
        description="shared-subscription group that splits ingest across replicas; empty: none",
    )
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keepalive in seconds")


class IngestSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    batch_size: int = Field(500, ge=1, le=100_000, description="most messages per commit")
    max_delay_s: float = Field(
        0.25, gt=0, le=60, description="longest a received message waits for its commit"
    )
    idle_flush_s: float = Field(
        0.01,
        gt=0,
        le=10,
        description="commit early when no message came for this long (keeps the broker's "
        "window of unacknowledged messages moving)",
    )


class HttpSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = Field("127.0.0.1", description="address the REST API listens on")
    port: int = Field(8080, ge=0, le=65535, description="REST API port; 0 picks a free one")


class ControllerSettings(BaseSettings):
    """Everything the controller needs; each default works on one machine."""

    model_config = SettingsConfigDict(
        env_prefix="EDGEFLEET_",
        env_nested_delimiter="__",
        extra="forbid",
    )

    data_dir: Path = Field(
        Path("./.edgefleet/controller"), description="where the database and bundles live"
    )
    database_url: str = Field(
        "",
        description="SQLAlchemy URL; empty means a SQLite file `controller.db` in data_dir",
    )
    mqtt: MqttSettings = Field(default_factory=MqttSettings, description="broker connection")
    http: HttpSettings = Field(default_factory=HttpSettings, description="REST API listener")
    ingest: IngestSettings = Field(
        default_factory=IngestSettings, description="batching of ingest writes"
    )
    chunk_size: int = Field(
        64 * 1024, gt=0, le=1 << 20, description="bytes per bundle chunk sent over MQTT"
    )
    max_inflight: int = Field(
        20, ge=1, le=10_000, description="most unacknowledged QoS 1 publishes at a time"
    )
    chunk_coalesce_s: float = Field(
        0.05,
        ge=0,
        le=10,
        description="how long chunk requests for one bundle gather before one pass serves all",
    )
    trust_path: Path | None = Field(
        None,
        description="release trust store (JSON) that uploaded bundles must verify against; "
        "empty means data_dir/trust.json",
    )
    max_bundle_bytes: int = Field(
        1 << 30, gt=0, description="largest bundle upload the API accepts"
    )
    max_snapshot_bytes: int = Field(
        8 << 20, gt=0, description="largest snapshot JPEG an agent may upload"
    )
    public_url: str = Field(
        "",
        pattern=r"^(https?://[^\s/]+(/[^\s]*)?)?$",
        description="base URL agents use to reach the REST API (bundle downloads); empty "
        "means http://<http.host>:<listening port>",
    )
    http_transfer_bytes: int = Field(
        8 << 20,
        ge=1,
        description="bundles of this size or larger are offered over HTTP range download "
        "instead of MQTT chunks",
    )

    def resolved_database_url(self) -> str:
        """The database URL, defaulting to a SQLite file inside data_dir."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'controller.db').resolve()}"

    def resolved_public_url(self, port: int | None = None) -> str:
        """The API base URL agents download from, without a trailing slash."""
        if self.public_url:
            return self.public_url.rstrip("/")
        host = self.http.host
        if host in ("0.0.0.0", "::", ""):  # noqa: S104 - a comparison, not a bind
            host = socket.getfqdn()  # listening everywhere: devices need a name, not 0.0.0.0
        return f"http://{host}:{port if port is not None else self.http.port}"

    def resolved_trust_path(self) -> Path:
        return self.trust_path if self.trust_path is not None else self.data_dir / "trust.json"

    @property
    def bundle_dir(self) -> Path:
        return self.data_dir / "bundles"


def _read_config_file(path: Path) -> dict[str, Any]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".toml":
        if sys.version_info < (3, 11):
            raise ValueError("TOML config files need Python 3.11; use JSON")
        import tomllib

        data: Any = tomllib.loads(text)
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the config file must hold one object")
    return data


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_settings(config_file: Path | None = None) -> ControllerSettings:
    """Settings from a JSON/TOML file (optional) overridden by `EDGEFLEET_*` variables.

    Raises ValueError (pydantic's ValidationError included) on unknown keys or bad values.
    """
    if config_file is None:
        return ControllerSettings()
    from_env = ControllerSettings().model_dump(exclude_unset=True)
    merged = _merge(_read_config_file(config_file), from_env)
    return ControllerSettings(**merged)
