"""What `/metrics` exposes, through prometheus_client and a registry of the app's own (two apps
in one process never share counters).

Most values already live elsewhere (the ingest's counters, the publisher, the database), so
they are read when Prometheus scrapes, by `ControllerCollector`; only the HTTP request metrics
are counted as requests pass, by the `HttpMetrics` middleware.

Cardinality stays bounded: HTTP metrics are labelled by the route's template
(`/api/devices/{device_id}`, never the raw path) and a known method; per-device gauges come from
one row per device (`device_health`, the newest sample) and cover at most `max_devices`
devices, in id order; how many were left out is itself a gauge.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from controller.bundles.chunks import ChunkServer
from controller.db import Deployment, Device, DeviceHealth
from controller.mqtt.ingest import IngestStats
from controller.mqtt.session import Publisher
from controller.rollouts.models import RolloutRow
from controller.rollouts.states import RolloutState
from protocol.events import DeploymentStatus

log = logging.getLogger(__name__)

DEFAULT_MAX_DEVICES = 10_000
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
HTTP_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# requests that matched no route (404s, refused Host headers) share one label value
UNMATCHED_ROUTE = "unmatched"


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _labelled_counter(name: str, doc: str, label: str, counts: dict[str, int]) -> Metric:
    family = CounterMetricFamily(name, doc, labels=[label])
    for key, value in sorted(counts.items()):
        family.add_metric([key], value)
    return family


def _by_status(name: str, doc: str, known: Iterable[str], counts: dict[str, int]) -> Metric:
    """A gauge per status; every known status is present (zero), so series never vanish."""
    family = GaugeMetricFamily(name, doc, labels=["status"])
    for status in sorted({*known, *counts}):
        family.add_metric([status], counts.get(status, 0))
    return family


def _latency(stats: dict[str, Any]) -> Metric:
    """Device send (its `ts`) to commit, from the ingest's own buckets."""
    buckets: dict[float, int] = stats.get("latency_buckets", {})
    cumulative: list[tuple[str, float]] = []
    total = 0
    for bound, count in buckets.items():
        total += count
        cumulative.append(("+Inf" if bound == float("inf") else repr(float(bound)), total))
    if not cumulative or cumulative[-1][0] != "+Inf":
        cumulative.append(("+Inf", total))
    return HistogramMetricFamily(
        "edgefleet_ingest_latency_seconds",
        "Seconds from a message's device time to its commit.",
        buckets=cumulative,
        sum_value=float(stats.get("latency_sum_s", 0.0)),
    )


def ingest_families(stats: dict[str, Any]) -> Iterator[Metric]:
    """The ingest's counters and gauges (IngestStats.snapshot())."""
    yield _counter(
        "edgefleet_ingest_received_total",
        "MQTT messages received by the ingest.",
        stats["received"],
    )
    yield _labelled_counter(
        "edgefleet_ingest_stored_total", "Messages committed, by channel.", "kind", stats["stored"]
    )
    yield _labelled_counter(
        "edgefleet_ingest_rejected_total",
        "Messages dropped as invalid, by error code.",
        "code",
        stats["rejected"],
    )
    yield _counter("edgefleet_ingest_batches_total", "Batches committed.", stats["batches"])
    yield _counter(
        "edgefleet_ingest_commit_failures_total",
        "Failed commit attempts (each is retried).",
        stats["commit_failures"],
    )
    yield _gauge(
        "edgefleet_ingest_last_commit_ms",
        "Duration of the last batch commit.",
        stats["last_commit_ms"],
    )
    yield _gauge(
        "edgefleet_ingest_queued",
        "Messages received, waiting for the writer (backpressure).",
        stats.get("queued", 0),
    )
    yield _gauge(
        "edgefleet_ingest_unacked",
        "QoS 1 messages received and not yet acknowledged to the broker.",
        stats.get("unacked", 0),
    )
    yield _gauge(
        "edgefleet_ingest_journal_bytes",
        "Bytes in the ingest journal, acknowledged to the broker and not yet stored.",
        stats.get("journal_bytes", 0),
    )
    yield _counter(
        "edgefleet_ingest_journal_failures_total",
        "Journal writes that failed (a full disk): acknowledged after the commit meanwhile.",
        stats.get("journal_failures", 0),
    )
    yield _gauge(
        "edgefleet_ingest_lag_seconds",
        "Longest wait from receipt to commit in the last batch.",
        stats.get("lag_s", 0.0),
    )
    yield _latency(stats)


def _device_sample(payload: dict[str, Any] | None) -> tuple[float, float, float | None] | None:
    """fps (all cameras), inference ms (slowest camera) and temperature (hottest sensor or
    accelerator; None: none reported) from a health payload; None without one."""
    if not payload:
        return None
    cameras = [c for c in payload.get("cameras") or () if isinstance(c, dict)]
    fps = sum(float(c.get("fps_processed") or 0.0) for c in cameras)
    inference = max((float(c.get("inference_ms") or 0.0) for c in cameras), default=0.0)
    temps = [float(t) for t in (payload.get("temperatures_c") or {}).values() if t is not None]
    for accelerator in payload.get("accelerators") or ():
        if isinstance(accelerator, dict) and accelerator.get("temperature_c") is not None:
            temps.append(float(accelerator["temperature_c"]))
    return fps, inference, max(temps) if temps else None


class ControllerCollector(Collector):
    """Reads the controller's state when Prometheus scrapes; see the module docstring.

    A database that does not answer leaves out the families read from it and sets
    `edgefleet_database_up` to 0; the in-memory ones are always there.
    """

    def __init__(
        self,
        stats: IngestStats,
        publisher: Publisher,
        chunks: ChunkServer,
        sessions: sessionmaker[Session],
        *,
        max_devices: int = DEFAULT_MAX_DEVICES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.stats = stats
        self.publisher = publisher
        self.chunks = chunks
        self.sessions = sessions
        self.max_devices = max_devices
        self.clock = clock

    def describe(self) -> list[Metric]:
        # nothing up front: registering must not query the database
        return []

    def collect(self) -> Iterator[Metric]:
        yield from ingest_families(self.stats.snapshot())
        yield _counter(
            "edgefleet_chunks_sent_total", "Bundle chunks published.", self.chunks.chunks_sent
        )
        yield _gauge(
            "edgefleet_chunk_readers",
            "Devices reading bundle chunks that the passes keep within their window.",
            self.chunks.readers,
        )
        yield _counter(
            "edgefleet_chunk_readers_released_total",
            "Readers that held a chunk pass up too long and stopped holding it.",
            self.chunks.readers_released,
        )
        yield _counter(
            "edgefleet_chunk_window_wait_seconds_total",
            "Seconds chunk passes waited for their readers to catch up.",
            self.chunks.window_wait_s,
        )
        yield _counter(
            "edgefleet_mqtt_published_total",
            "QoS 1 messages handed to the broker.",
            self.publisher.published,
        )
        yield _gauge(
            "edgefleet_mqtt_inflight",
            "QoS 1 publishes not yet acknowledged.",
            self.publisher.inflight,
        )
        try:
            with self.sessions() as db:
                families = list(self._database(db))
        except SQLAlchemyError as exc:
            log.warning("event=metrics_database_failed error=%s", type(exc).__name__)
            families = []
        yield _gauge(
            "edgefleet_database_up",
            "1 when the database answered this scrape's queries, else 0.",
            1 if families else 0,
        )
        yield from families

    def _database(self, db: Session) -> Iterator[Metric]:
        total = db.scalar(select(func.count()).select_from(Device)) or 0
        online = db.scalar(select(func.count()).select_from(Device).where(Device.online)) or 0
        yield _gauge("edgefleet_devices_online", "Devices whose last state is online.", online)
        yield _gauge("edgefleet_devices", "Devices known to the controller.", total)
        deployments = db.execute(
            select(Deployment.status, func.count()).group_by(Deployment.status)
        ).all()
        yield _by_status(
            "edgefleet_deployments",
            "Deployments by status.",
            (s.value for s in DeploymentStatus),
            {str(status): int(n) for status, n in deployments},
        )
        rollouts = db.execute(
            select(RolloutRow.state, func.count()).group_by(RolloutRow.state)
        ).all()
        yield _by_status(
            "edgefleet_rollouts",
            "Rollouts by status (their state).",
            (s.value for s in RolloutState),
            {str(state): int(n) for state, n in rollouts},
        )
        newest = db.scalar(select(func.max(DeviceHealth.received)))
        yield _gauge(
            "edgefleet_ingest_newest_health_age_seconds",
            "Seconds since the newest stored health sample was received; grows while the "
            "ingest stores nothing (or no device reports).",
            max(0.0, self.clock() - newest) if newest is not None else 0.0,
        )
        yield from self._devices(db, total)

    def _devices(self, db: Session, total: int) -> Iterator[Metric]:
        labels = ["device"]
        fps = GaugeMetricFamily(
            "edgefleet_device_fps", "Frames processed per second, all cameras.", labels=labels
        )
        inference = GaugeMetricFamily(
            "edgefleet_device_inference_ms",
            "Inference time of the slowest camera, milliseconds.",
            labels=labels,
        )
        temperature = GaugeMetricFamily(
            "edgefleet_device_temperature_celsius",
            "Hottest temperature the device reports (sensors and accelerators).",
            labels=labels,
        )
        last_seen = GaugeMetricFamily(
            "edgefleet_device_last_seen_timestamp_seconds",
            "Unix time the controller last heard from the device.",
            labels=labels,
        )
        query = (
            select(Device.id, Device.last_seen, DeviceHealth.payload)
            .outerjoin(DeviceHealth, DeviceHealth.device == Device.id)
            .order_by(Device.id)
            .limit(self.max_devices)
        )
        shown = 0
        for device_id, seen, payload in db.execute(query):
            shown += 1
            last_seen.add_metric([device_id], seen)
            sample = _device_sample(payload)
            if sample is None:
                continue
            fps.add_metric([device_id], sample[0])
            inference.add_metric([device_id], sample[1])
            if sample[2] is not None:
                temperature.add_metric([device_id], sample[2])
        yield from (fps, inference, temperature, last_seen)
        yield _gauge(
            "edgefleet_device_series_dropped",
            "Devices left out of the per-device gauges (more than the limit).",
            max(0, total - shown),
        )


class HttpInstruments:
    """The HTTP request counter and latency histogram, in one app's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "edgefleet_http_requests",
            "HTTP requests answered, by method, route template and status.",
            ["method", "route", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "edgefleet_http_request_duration_seconds",
            "Seconds to answer an HTTP request, by method and route template.",
            ["method", "route"],
            buckets=HTTP_BUCKETS_S,
            registry=registry,
        )

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        method = method if method in HTTP_METHODS else "OTHER"
        self.requests.labels(method, route, str(status)).inc()
        self.duration.labels(method, route).observe(seconds)


def route_template(scope: Scope) -> str:
    """The matched route's path template, or `unmatched`."""
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) and path else UNMATCHED_ROUTE


class HttpMetrics:
    """ASGI middleware counting each HTTP request once it is answered (or failed: 500)."""

    def __init__(self, app: ASGIApp, instruments: HttpInstruments) -> None:
        self.app = app
        self.instruments = instruments

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def watched(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, watched)
        finally:
            self.instruments.observe(
                str(scope.get("method", "")),
                route_template(scope),
                status,
                time.perf_counter() - started,
            )
