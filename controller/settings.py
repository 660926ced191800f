"""Controller settings: pydantic-settings with the `EDGEFLEET_` prefix and `__` nesting."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
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
    ca_file: Path | None = Field(
        None, description="CA (PEM) that signed the broker's certificate; set: connect over TLS"
    )
    cert_file: Path | None = Field(None, description="the controller's client certificate (PEM)")
    key_file: Path | None = Field(None, description="the controller's client key (PEM)")

    @property
    def tls(self) -> bool:
        return self.ca_file is not None

    @model_validator(mode="after")
    def _tls_beyond_loopback(self) -> MqttSettings:
        # a broker beyond loopback is reached over TLS with a client certificate, never plain
        if not _is_loopback(self.host) and not (self.ca_file and self.cert_file and self.key_file):
            raise ValueError(
                f"tls_required: broker {self.host!r} is not on loopback; set mqtt.ca_file, "
                "mqtt.cert_file and mqtt.key_file"
            )
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("tls_incomplete: mqtt.cert_file and mqtt.key_file go together")
        return self


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class EnrollmentSettings(BaseModel):
    """Device identities: the CAs, certificate lifetime, pending requests."""

    model_config = ConfigDict(extra="forbid")

    pki_dir: Path | None = Field(
        None, description="the fleet and service CAs (private keys 0600); empty: data_dir/pki"
    )
    cert_days: int = Field(90, ge=1, le=825, description="lifetime of a device certificate")
    max_pending: int = Field(
        1000, ge=1, le=1_000_000, description="most enrollment requests awaiting approval"
    )
    broker_files_dir: Path | None = Field(
        None,
        description="the broker's generated files (CRL, ACL); set: revocations rewrite the CRL "
        "there, signal the broker to re-read it and close the device's connection",
    )
    broker_pid_file: Path | None = Field(
        None, description="mosquitto's pid file; the broker gets SIGHUP after a revocation"
    )


MAX_AUTO_WORKERS = 4
"""Most ingest worker processes started when `ingest.workers` is unset."""


def _usable_cpus() -> int:
    """Cores this process may run on (its affinity, e.g. under systemd's CPUAffinity= or a
    container's cpuset), else the machine's."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class IngestSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    batch_size: int = Field(2000, ge=1, le=100_000, description="most messages per commit")
    max_delay_s: float = Field(
        0.25, gt=0, le=60, description="longest a received message waits for its commit"
    )
    idle_flush_s: float = Field(
        0.002,
        gt=0,
        le=10,
        description="commit early when no message came for this long (keeps the broker's "
        "window of unacknowledged messages moving)",
    )
    sessions: int = Field(
        8,
        ge=1,
        le=64,
        description="MQTT sessions the ingest opens in one shared-subscription group; each "
        "brings the broker's window of unacknowledged messages again; more than one needs a "
        "broker with shared subscriptions (1: a plain subscription, e.g. for RabbitMQ 3.x)",
    )
    workers: int | None = Field(
        None,
        ge=0,
        le=32,
        description="ingest processes beside the controller's own (controller.mqtt.workers): "
        "they take detections and health, each with its own MQTT sessions in the share group, "
        "its own journal (data_dir/ingest-journal-wN) and its own database connections, so "
        "the ingest is not bound to one core; 0: the controller's process takes everything; "
        f"unset: one per CPU core up to {MAX_AUTO_WORKERS}, none on one core or with "
        "`sessions = 1` (a broker without shared subscriptions)",
    )
    max_payload_bytes: int = Field(
        64 * 1024,
        ge=1024,
        le=256 * 1024,
        description="larger agent messages are dropped, counted and logged before decoding",
    )
    journal: bool = Field(
        True,
        description="acknowledge messages once they are synced to a local journal "
        "(data_dir/ingest-journal) and store them from there; off: acknowledge after the "
        "database commit, and a lagging database leaves the backlog to the broker",
    )
    journal_max_bytes: int = Field(
        1 << 30,
        ge=1 << 20,
        description="journal backlog past which messages are acknowledged after their commit "
        "again (the broker holds the rest)",
    )
    journal_segment_bytes: int = Field(
        64 << 20, ge=1 << 20, le=1 << 31, description="journal segment files' size"
    )
    journal_commit_interval_s: float = Field(
        0.05,
        gt=0,
        le=5,
        description="once caught up, the writer reads the journal this often (larger "
        "batches, fewer commits; acknowledgements never wait for it)",
    )
    max_queued: int = Field(
        50_000,
        ge=100,
        le=1_000_000,
        description="received messages waiting for the writer; past it QoS 0 health is shed, "
        "counted as `overload` (QoS 1 is bounded by the broker's window)",
    )
    health_history_s: float = Field(
        60.0,
        ge=0,
        le=86_400,
        description="one full health sample per device is kept per this many seconds; every "
        "sample updates the device's latest health and its per-minute rollup (0: keep all)",
    )
    retention_days: float = Field(
        30.0, gt=0, le=3650, description="detections, health and events older than this go"
    )
    partition_days_ahead: int = Field(
        7, ge=1, le=90, description="PostgreSQL: daily detection partitions created ahead"
    )

    def worker_count(self, cpus: int | None = None) -> int:
        """How many ingest worker processes run: `workers`, or when unset one per CPU core
        (`cpus`, default the cores this process may run on) up to MAX_AUTO_WORKERS; none on
        a single core, or with a single session, which marks a broker without shared
        subscriptions."""
        if self.workers is not None:
            return self.workers
        cpus = _usable_cpus() if cpus is None else cpus
        if cpus < 2 or self.sessions == 1:
            return 0
        return min(cpus, MAX_AUTO_WORKERS)


class HttpSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = Field("127.0.0.1", description="address the REST API listens on")
    port: int = Field(8080, ge=0, le=65535, description="REST API port; 0 picks a free one")
    cert_file: Path | None = Field(
        None, description="the API's TLS certificate chain (PEM); set: the API serves https only"
    )
    key_file: Path | None = Field(None, description="the API's TLS private key (PEM)")

    @property
    def tls(self) -> bool:
        return self.cert_file is not None

    @model_validator(mode="after")
    def _tls_beyond_loopback(self) -> HttpSettings:
        # operators' passwords, API tokens, enrollment and transfer tokens cross this port:
        # beyond loopback it is https, never plain
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("tls_incomplete: http.cert_file and http.key_file go together")
        if not self.tls and not _is_loopback(self.host):
            raise ValueError(
                f"tls_required: the API would listen on {self.host!r}, beyond loopback; set "
                "http.cert_file and http.key_file (or put it behind a TLS proxy on loopback)"
            )
        return self


class AuthSettings(BaseModel):
    """Operators' authentication and the API's request guards."""

    model_config = ConfigDict(extra="forbid")

    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host header values the API answers besides loopback names and the host "
        "of public_url ('*.example.com' allowed); anything else gets 400",
    )
    session_ttl_s: float = Field(
        12 * 3600.0, gt=0, le=30 * 86400, description="lifetime of a browser login session"
    )
    token_ttl_s: float = Field(
        90 * 86400.0, gt=0, le=366 * 86400, description="default lifetime of a new API token"
    )
    transfer_token_ttl_s: float = Field(
        24 * 3600.0,
        gt=0,
        le=30 * 86400,
        description="lifetime of the per-command token a device uses to download a bundle or "
        "upload a snapshot",
    )
    login_failures_per_user: int = Field(
        5, ge=1, le=1000, description="failed logins per user name per window before 429"
    )
    login_failures_per_client: int = Field(
        20, ge=1, le=10_000, description="failed logins per client address per window"
    )
    login_window_s: float = Field(300.0, gt=0, le=86400, description="login failure window")
    max_body_bytes: int = Field(
        1 << 20,
        gt=0,
        description="largest request body of any route without its own cap (bundle and "
        "snapshot uploads have theirs)",
    )
    metrics_open_on_loopback: bool = Field(
        True,
        description="serve /metrics without credentials to clients on loopback (a local "
        "Prometheus); other clients need a viewer token",
    )


class RolloutSettings(BaseModel):
    """The rollout engine and the scheduler that drives it."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="run the rollout engine and scheduled jobs")
    tick_s: float = Field(1.0, gt=0, le=60, description="seconds between rollout ticks")
    leader_retry_s: float = Field(
        5.0, gt=0, le=300, description="how often a replica that does not lead tries to"
    )
    revert_retry_s: float = Field(
        60.0, gt=0, le=3600, description="seconds before a rollback command is sent again"
    )
    retention_every_s: float = Field(
        3600.0, gt=0, description="seconds between runs of the data-retention job"
    )


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
    auth: AuthSettings = Field(
        default_factory=AuthSettings, description="operators' logins, tokens and API guards"
    )
    enrollment: EnrollmentSettings = Field(
        default_factory=EnrollmentSettings, description="device identities and certificates"
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
    chunk_send_mb_s: float = Field(
        2.0,
        ge=0,
        le=10_000,
        description="ceiling on the pace of the shared bundle-chunk broadcast in MB/s (0: "
        "none); under it a pass goes as fast as its readers report reading, each kept within "
        "a window below the broker's per-client queue",
    )
    trust_path: Path | None = Field(
        None,
        description="release trust store (JSON) that uploaded bundles must verify against; "
        "empty means data_dir/trust.json",
    )
    command_key_path: Path | None = Field(
        None,
        description="the controller's command key (PEM; encrypted: passphrase in "
        "EDGEFLEET_KEY_PASSPHRASE) that signs every command; empty means "
        "data_dir/command.pem, and without that file commands go out unsigned",
    )
    command_ttl_s: float = Field(
        300.0, gt=0, le=900, description="how long a signed command stays valid on devices"
    )
    root_expiry_warning_days: int = Field(
        30, ge=1, le=3650, description="warn at start when the root expires within this many days"
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
    rollouts: RolloutSettings = Field(
        default_factory=RolloutSettings, description="rollout engine and scheduler"
    )
    log_format: Literal["text", "json"] = Field(
        "text",
        description="log lines as `ts=… level=… logger=… message` text or one JSON object each, "
        "third-party libraries' lines included (env EDGEFLEET_LOG_FORMAT)",
    )

    @model_validator(mode="after")
    def _workers_share(self) -> ControllerSettings:
        # each worker subscribes the same channels: without a share group every one of them
        # would store every message
        if (
            self.ingest.worker_count() > 1
            and self.ingest.sessions == 1
            and not self.mqtt.share_group
        ):
            raise ValueError(
                "workers_need_share_group: several ingest workers need a shared subscription; "
                "set ingest.sessions above 1 or mqtt.share_group (or ingest.workers to 0 or 1)"
            )
        return self

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
        scheme = "https" if self.http.tls else "http"
        return f"{scheme}://{host}:{port if port is not None else self.http.port}"

    def resolved_command_key_path(self) -> Path:
        if self.command_key_path is not None:
            return self.command_key_path
        return self.data_dir / "command.pem"

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


BROKER_DELIVERY_LIMITS = (
    # per client: many small messages in flight and queued (the controller's ingest reads
    # thousands of devices through a few sessions), but few bytes, so a device that reads
    # bundle chunks slower than they are sent costs the broker a window of them, not the bundle
    # (mosquitto keeps a copy per subscriber). What falls past the window is asked for again
    # and sent in a later pass (controller.bundles.chunks).
    #
    # mosquitto has one such limit for every client, and past it a QoS 1 message is dropped,
    # not held: the same bytes bound a slow device's chunk backlog and the backlog an ingest
    # session may build while its replica lags or restarts. 1 MB lost detections at 10,000
    # devices (a lagging ingest passed it in about two seconds); 4 MB holds about 13 s of a
    # dead replica's share of 10,000 devices (two replicas of eight sessions), and costs a
    # stalled chunk reader 4 MB at most.
    "max_inflight_messages 100",
    "max_inflight_bytes 262144",
    "max_queued_messages 100000",
    "max_queued_bytes 4194304",
)
"""mosquitto.conf lines bounding each client's share of broker memory: in the demo broker's
configuration and in the generated production one alike."""
