"""Routes that say how the controller itself is doing: `/healthz` for probes and `/metrics` in
the Prometheus text format."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import PlainTextResponse
from sqlalchemy import func, select, text
from sqlalchemy.exc import SQLAlchemyError

from controller.api.models import HealthzOut
from controller.api.params import Db
from controller.api.security import METRICS, PUBLIC
from controller.bundles.chunks import ChunkServer
from controller.db import Device
from controller.mqtt.ingest import IngestStats
from controller.mqtt.session import Publisher


def _family(name: str, kind: str, doc: str, samples: dict[str, float]) -> list[str]:
    """One metric family in the Prometheus text format; sample keys are label strings."""
    lines = [f"# HELP {name} {doc}", f"# TYPE {name} {kind}"]
    lines += [f"{name}{labels} {value:g}" for labels, value in sorted(samples.items())]
    return lines


def _labelled(label: str, counts: dict[str, int]) -> dict[str, float]:
    return {f'{{{label}="{key}"}}': float(value) for key, value in counts.items()}


def _latency_family(stats: dict[str, Any]) -> list[str]:
    """Device send (its `ts`) to commit, as a Prometheus histogram."""
    name = "edgefleet_ingest_latency_seconds"
    buckets: dict[float, int] = stats.get("latency_buckets", {})
    lines = [f"# HELP {name} Seconds from a message's device time to its commit.",
             f"# TYPE {name} histogram"]  # fmt: skip
    total = 0
    for bound, count in buckets.items():
        total += count
        le = "+Inf" if bound == float("inf") else f"{bound:g}"
        lines.append(f'{name}_bucket{{le="{le}"}} {total}')
    lines += [f"{name}_sum {stats.get('latency_sum_s', 0.0):g}", f"{name}_count {total}"]
    return lines


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
        *_family("edgefleet_ingest_queued", "gauge",
                 "Messages received, waiting for the writer (backpressure).",
                 {"": stats.get("queued", 0)}),
        *_family("edgefleet_ingest_unacked", "gauge",
                 "QoS 1 messages received and not yet acknowledged to the broker.",
                 {"": stats.get("unacked", 0)}),
        *_family("edgefleet_ingest_lag_seconds", "gauge",
                 "Longest wait from receipt to commit in the last batch.",
                 {"": stats.get("lag_s", 0.0)}),
        *_latency_family(stats),
        *_family("edgefleet_devices_online", "gauge",
                 "Devices whose last state is online.", {"": devices["online"]}),
        *_family("edgefleet_devices", "gauge",
                 "Devices known to the controller.", {"": devices["total"]}),
        *extra,
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


def monitoring_router(
    stats: IngestStats,
    publisher: Publisher,
    chunks: ChunkServer,
    mqtt_ready: Callable[[], bool],
) -> APIRouter:
    """`/healthz` and `/metrics` over the ingest's counters, the publisher and the chunk server."""
    router = APIRouter()

    # open: a probe holds no credentials, and the answer says nothing about devices
    @router.get("/healthz", tags=[PUBLIC])
    def healthz(db: Db, response: Response) -> HealthzOut:
        try:
            db.execute(text("SELECT 1"))
            database = True
        except SQLAlchemyError:
            database = False
        mqtt = mqtt_ready()
        if not (database and mqtt):
            response.status_code = 503
        return HealthzOut(
            status="ok" if database and mqtt else "degraded", database=database, mqtt=mqtt
        )

    @router.get("/metrics", response_class=PlainTextResponse, tags=[METRICS])
    def metrics(db: Db) -> PlainTextResponse:
        total = db.scalar(select(func.count()).select_from(Device)) or 0
        online = db.scalar(select(func.count()).select_from(Device).where(Device.online)) or 0
        extra = [
            *_family("edgefleet_chunks_sent_total", "counter",
                     "Bundle chunks published.", {"": chunks.chunks_sent}),
            *_family("edgefleet_mqtt_published_total", "counter",
                     "QoS 1 messages handed to the broker.", {"": publisher.published}),
            *_family("edgefleet_mqtt_inflight", "gauge",
                     "QoS 1 publishes not yet acknowledged.", {"": publisher.inflight}),
        ]  # fmt: skip
        body = _metrics_text(stats.snapshot(), {"online": online, "total": total}, extra)
        return PlainTextResponse(body, media_type="text/plain; version=0.0.4")

    return router
