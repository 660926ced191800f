"""The controller's database: typed SQLAlchemy models, engines, sessions and migrations.

Times are stored as unix seconds (float) so SQLite and PostgreSQL behave the same.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    create_engine,
    event,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from protocol.events import EventLevel

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# Any fixed number: serialises migrations when several replicas start at once on PostgreSQL.
_PG_MIGRATION_LOCK = 0x6564676566
SUPPORTED_DIALECTS = ("sqlite", "postgresql")


# Deterministic constraint names, so later migrations can refer to them on every dialect.
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Device(Base):
    __tablename__ = "devices"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    online: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(16), default="unknown")
    profile: Mapped[str] = mapped_column(String(256), default="")
    agent_version: Mapped[str] = mapped_column(String(256), default="")
    runtimes: Mapped[list[Any]] = mapped_column(default=list)
    cameras: Mapped[list[Any]] = mapped_column(default=list)
    # what the device's own settings say; operators' tags are in the rollouts' inventory
    declared_tags: Mapped[list[Any]] = mapped_column(default=list, server_default=text("'[]'"))
    active_name: Mapped[str | None] = mapped_column(String(64))
    active_version: Mapped[int | None] = mapped_column(Integer)
    active_digest: Mapped[str | None] = mapped_column(String(64))
    active_runtime: Mapped[str | None] = mapped_column(String(64))
    active_reason: Mapped[str | None] = mapped_column(Text)
    first_seen: Mapped[float] = mapped_column(Float)
    last_seen: Mapped[float] = mapped_column(Float)

    __table_args__ = (Index("ix_devices_online", "online"),)


class Bundle(Base):
    __tablename__ = "bundles"

    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    size: Mapped[int] = mapped_column(BigInteger)
    chunk_size: Mapped[int] = mapped_column(Integer)
    manifest: Mapped[dict[str, Any]] = mapped_column()
    path: Mapped[str] = mapped_column(String(512))
    created: Mapped[float] = mapped_column(Float)

    __table_args__ = (Index("ix_bundles_name_version", "name", "version"),)


class Deployment(Base):
    __tablename__ = "deployments"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    device: Mapped[str] = mapped_column(ForeignKey("devices.id"))
    bundle: Mapped[str] = mapped_column(ForeignKey("bundles.digest"))
    cmd_id: Mapped[str] = mapped_column(String(64), unique=True)
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text, default="")
    created: Mapped[float] = mapped_column(Float)
    updated: Mapped[float] = mapped_column(Float)

    __table_args__ = (
        Index("ix_deployments_device_created", "device", "created"),
        Index("ix_deployments_bundle_device", "bundle", "device"),
        Index("ix_deployments_created", "created"),
    )


class DetectionRow(Base):
    __tablename__ = "detections"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    device: Mapped[str] = mapped_column(ForeignKey("devices.id"))
    camera: Mapped[str] = mapped_column(String(64))
    track_id: Mapped[int | None] = mapped_column(Integer)
    event: Mapped[str] = mapped_column(String(8), default="update", server_default="update")
    label: Mapped[str] = mapped_column(String(256))
    score: Mapped[float] = mapped_column(Float)
    x1: Mapped[float] = mapped_column(Float)
    y1: Mapped[float] = mapped_column(Float)
    x2: Mapped[float] = mapped_column(Float)
    y2: Mapped[float] = mapped_column(Float)
    ts: Mapped[float] = mapped_column(Float)
    model: Mapped[str] = mapped_column(String(256), default="")
    runtime: Mapped[str] = mapped_column(String(256), default="")
    snapshot: Mapped[str | None] = mapped_column(String(256))
    received: Mapped[float] = mapped_column(Float)

    __table_args__ = (
        Index("ix_detections_ts", "ts"),
        Index("ix_detections_device_ts", "device", "ts"),
        Index("ix_detections_label_ts", "label", "ts"),
    )


class HealthRow(Base):
    __tablename__ = "health"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    msg_id: Mapped[str] = mapped_column(String(64), unique=True)
    device: Mapped[str] = mapped_column(ForeignKey("devices.id"))
    ts: Mapped[float] = mapped_column(Float)
    payload: Mapped[dict[str, Any]] = mapped_column()
    received: Mapped[float] = mapped_column(Float)

    __table_args__ = (
        Index("ix_health_device_ts", "device", "ts"),
        Index("ix_health_ts", "ts"),
    )


# PostgreSQL: the newest health samples that may give a fleet alert (controller.dashboard.
# queries.health_alerts: a skewed clock, outbox messages dropped, a temperature at or over the
# hot threshold, a `*_now` throttling flag), with thresholds a little lower, so a superset. The
# fleet page reads these few rows from the partial index instead of parsing every payload. A
# payload with a \u escape is always in (its jsonb cast could fail on \u0000). Migration 0009
# holds the same text; keep them equal.
DEVICE_HEALTH_MAY_ALERT_PG = (
    "CASE WHEN strpos(payload::text, '\\u') > 0 THEN true ELSE ("
    "abs(received - ts) > 29.0 OR jsonb_path_exists(payload::jsonb, '$ ? ("
    'exists(@.outbox_dropped ? (@.type() != "number" || @ > 0)) || '
    "exists(@.temperatures_c.* ? (@ >= 79)) || "
    'exists(@.throttling.keyvalue() ? (@.value == true && @.key like_regex "_now$")))'
    "', '{}', true)) END"
)


class DeviceHealth(Base):
    """The newest health sample of each device, whole (the ingest keeps it current)."""

    __tablename__ = "device_health"

    device: Mapped[str] = mapped_column(ForeignKey("devices.id"), primary_key=True)
    msg_id: Mapped[str] = mapped_column(String(64))
    ts: Mapped[float] = mapped_column(Float)
    payload: Mapped[dict[str, Any]] = mapped_column()
    received: Mapped[float] = mapped_column(Float)

    # a partial index on PostgreSQL; on SQLite (which cannot look inside the JSON in an index)
    # a plain one on the key, which the upserts never change
    __table_args__ = (
        Index(
            "ix_device_health_may_alert",
            "device",
            postgresql_where=text(DEVICE_HEALTH_MAY_ALERT_PG),
        ),
    )


class HealthRollup(Base):
    """Every health sample of a device, folded into its minute (unix seconds // 60)."""

    __tablename__ = "health_rollups"

    device: Mapped[str] = mapped_column(ForeignKey("devices.id"), primary_key=True)
    minute: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    samples: Mapped[int] = mapped_column(Integer)
    cpu_sum: Mapped[float] = mapped_column(Float)
    cpu_max: Mapped[float] = mapped_column(Float)
    temp_max: Mapped[float | None] = mapped_column(Float)
    fps_in_sum: Mapped[float] = mapped_column(Float)
    fps_processed_sum: Mapped[float] = mapped_column(Float)
    inference_ms_max: Mapped[float] = mapped_column(Float)
    outbox_depth_max: Mapped[int] = mapped_column(Integer)

    __table_args__ = (Index("ix_health_rollups_minute", "minute"),)


class IngestJournalPosition(Base):
    """Where an ingest journal's writer stands, written in the transaction of the rows it read
    (controller.mqtt.journal): after a crash, each journalled message is stored once."""

    __tablename__ = "ingest_journal"

    journal: Mapped[str] = mapped_column(String(64), primary_key=True)
    segment: Mapped[int] = mapped_column(BigInteger)
    offset: Mapped[int] = mapped_column(BigInteger)
    updated: Mapped[float] = mapped_column(Float)


class EventRow(Base):
    __tablename__ = "events"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    device: Mapped[str] = mapped_column(ForeignKey("devices.id"))
    kind: Mapped[str] = mapped_column(String(32))
    level: Mapped[str] = mapped_column(String(16), default=EventLevel.INFO.value)
    bundle: Mapped[str | None] = mapped_column(String(64))
    cmd_id: Mapped[str | None] = mapped_column(String(256))
    reason: Mapped[str | None] = mapped_column(String(256))
    message: Mapped[str] = mapped_column(Text, default="")
    ts: Mapped[float] = mapped_column(Float)
    received: Mapped[float] = mapped_column(Float)

    __table_args__ = (
        Index("ix_events_ts", "ts"),
        Index("ix_events_device_ts", "device", "ts"),
        Index("ix_events_kind_ts", "kind", "ts"),
    )


# ---- engines and sessions -------------------------------------------------------------------


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=10000")
    finally:
        cursor.close()


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for a SQLite or PostgreSQL URL; raises ValueError for other databases."""
    parsed = make_url(url)
    if parsed.get_backend_name() not in SUPPORTED_DIALECTS:
        raise ValueError(f"unsupported database {parsed.get_backend_name()!r}")
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs.setdefault("connect_args", {"check_same_thread": False, "timeout": 10})
        engine = create_engine(parsed, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(parsed, **kwargs)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


# ---- migrations -----------------------------------------------------------------------------


def alembic_config(url: str | None = None) -> Any:
    """An Alembic Config built in code; no alembic.ini is needed on disk."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        # configparser interpolates '%', which URL-encoded passwords contain
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade_database(url: str, revision: str = "heads") -> None:
    """Bring the database at `url` to `revision`; raises sqlalchemy errors on failure.

    The default is every head: a room (ingest, auth, rollouts) may start its own branch of
    migrations, and a merge revision joins the branches again.
    """
    from alembic import command

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
                conn.commit()
            try:
                cfg = alembic_config()
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, revision)
                conn.commit()
            finally:
                if conn.dialect.name == "postgresql":
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_MIGRATION_LOCK})
                    conn.commit()
    finally:
        engine.dispose()
    log.info("event=database_migrated revision=%s dialect=%s", revision, make_url(url).drivername)


def downgrade_database(url: str, revision: str = "base") -> None:
    """Take the database at `url` back to `revision`."""
    from alembic import command

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            cfg = alembic_config()
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, revision)
            conn.commit()
    finally:
        engine.dispose()
