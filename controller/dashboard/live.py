"""Live updates of a device page as server-sent events.

The stream polls the database (so it sees what any controller replica stored) for detections
received after the last one sent and for a change of the device's state; each poll opens and
closes its own session, none is held across the sleeps. Events carry HTML fragments rendered
with the pages' escaping templates:

- `detection`: one row of the live detections table (its id: the row's `received` time, so a
  reconnecting browser resumes with Last-Event-ID);
- `state`: the device's state panel, whole.

The stream ends when the client goes away, or after `max_s` (the browser reconnects).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session, sessionmaker

from controller.api.security import principal_of
from controller.dashboard import queries
from controller.dashboard.pages import SNAPSHOT_ID, Renderer, Viewer
from controller.db import Device

log = logging.getLogger(__name__)


def sse(event: str, data: str, event_id: str | None = None) -> str:
    """One server-sent event; `data` may span lines."""
    lines = [f"event: {event}"]
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.extend(f"data: {line}" for line in data.splitlines() or [""])
    return "\n".join(lines) + "\n\n"


@dataclass
class _Cursor:
    received: float
    seen: set[str] = field(default_factory=set)
    state: tuple[Any, ...] | None = None


def _parse_after(value: str | None) -> float | None:
    try:
        after = float(value) if value else None
    except ValueError:
        return None
    return after if after is not None and after == after else None  # NaN is no cursor


def live_router(render: Renderer, poll_s: float = 0.5, max_s: float = 300.0) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/devices/{device_id}/live")
    async def live(request: Request, device_id: str, after: str | None = None) -> StreamingResponse:
        sessions: sessionmaker[Session] = request.app.state.sessions
        me = Viewer.of(principal_of(request))

        def known() -> bool:
            with sessions() as db:
                return db.get(Device, device_id) is not None

        if not await run_in_threadpool(known):
            raise HTTPException(404, f"no device {device_id!r}")
        start = _parse_after(request.headers.get("last-event-id")) or _parse_after(after)
        cursor = _Cursor(received=start if start is not None else time.time())

        def poll(first: bool) -> list[str]:
            out: list[str] = []
            with sessions() as db:
                state = queries.device_state_key(db, device_id)
                if first:
                    cursor.state = state
                elif state != cursor.state:
                    cursor.state = state
                    detail = queries.device_detail(db, device_id, time.time())
                    if detail is not None:
                        html = render.fragment(
                            "device_state.html", me=me, d=detail, dev=detail.device
                        )
                        out.append(sse("state", html))
                rows = queries.detections_after(db, device_id, cursor.received, cursor.seen)
                for row in rows:
                    if first and row.received <= cursor.received:
                        # the page already shows what was received up to its cursor
                        cursor.seen.add(row.id)
                        continue
                    if row.received > cursor.received:
                        cursor.received, cursor.seen = row.received, set()
                    cursor.seen.add(row.id)
                    html = render.fragment("detection_row.html", det=row, snapshot_id=SNAPSHOT_ID)
                    out.append(sse("detection", html, repr(row.received)))
            return out

        async def stream() -> AsyncIterator[str]:
            deadline = time.monotonic() + max_s
            ended = "time_limit"
            try:
                yield "retry: 1000\n\n"
                first = True
                while time.monotonic() < deadline:
                    if await request.is_disconnected():
                        ended = "client_gone"
                        return
                    for message in await run_in_threadpool(poll, first):
                        yield message
                    first = False
                    yield ": tick\n\n"
                    await asyncio.sleep(poll_s)
            except asyncio.CancelledError:
                ended = "client_gone"
                raise
            finally:
                log.info("event=live_stream_end device=%r reason=%s", device_id, ended)

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    return router
