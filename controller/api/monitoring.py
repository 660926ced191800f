"""Routes that say how the controller itself is doing: `/livez` (the process answers),
`/readyz` (it can do its work: database and MQTT), `/healthz` (the older combined probe) and
`/metrics` in the Prometheus text format (controller.api.metrics)."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter, Request, Response
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from controller.api.models import HealthzOut, LivezOut, ReadyzOut
from controller.api.security import METRICS, PUBLIC


def database_problem(sessions: sessionmaker[Session]) -> str | None:
    """None when the database answers `SELECT 1`, else why not."""
    try:
        with sessions() as db:
            db.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        return f"database unreachable: {type(exc).__name__}"
    return None


def monitoring_router(
    registry: CollectorRegistry,
    sessions: sessionmaker[Session],
    mqtt_ready: Callable[[], bool],
) -> APIRouter:
    """The probes, and `/metrics` over `registry`."""
    router = APIRouter()

    # the probes are open: a prober holds no credentials, and the answers say nothing about
    # devices
    @router.get("/livez", tags=[PUBLIC])
    async def livez() -> LivezOut:
        # no I/O: only whether the process still answers
        return LivezOut(status="ok")

    @router.get("/readyz", tags=[PUBLIC])
    def readyz(response: Response) -> ReadyzOut:
        reasons = []
        problem = database_problem(sessions)
        if problem is not None:
            reasons.append(problem)
        mqtt = mqtt_ready()
        if not mqtt:
            reasons.append("mqtt sessions not connected")
        if reasons:
            response.status_code = 503
        return ReadyzOut(
            status="not_ready" if reasons else "ready",
            database=problem is None,
            mqtt=mqtt,
            reasons=reasons,
        )

    @router.get("/healthz", tags=[PUBLIC])
    def healthz(response: Response) -> HealthzOut:
        database = database_problem(sessions) is None
        mqtt = mqtt_ready()
        if not (database and mqtt):
            response.status_code = 503
        return HealthzOut(
            status="ok" if database and mqtt else "degraded", database=database, mqtt=mqtt
        )

    @router.get("/metrics", tags=[METRICS], response_class=Response)
    def metrics(request: Request) -> Response:
        # the OpenMetrics format when the scraper asks for it, else the text format
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encoder(registry), media_type=content_type)

    return router
