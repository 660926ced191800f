"""The operators' web dashboard: server-rendered pages, htmx for actions and partial refresh,
server-sent events for live updates. `install(app)` adds it to the controller's API app.

Every asset is served by the controller itself (controller/static; the pinned third-party
libraries are fetched into static/vendor by scripts/fetch-assets.sh), so an offline site has a
working dashboard and working API docs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Route

from controller.dashboard.live import live_router
from controller.dashboard.pages import Renderer, make_environment, pages_router

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent.parent / "static"
VENDOR = STATIC / "vendor"
NEEDED = ("htmx.min.js", "swagger-ui-bundle.js", "swagger-ui.css")


def missing_assets() -> list[str]:
    return [name for name in NEEDED if not (VENDOR / name).is_file()]


def _is_page(request: Request) -> bool:
    path = request.url.path
    if "text/event-stream" in request.headers.get("accept", ""):
        return False
    return not path.startswith(("/api/", "/static/", "/healthz", "/metrics", "/openapi"))


def install(
    app: FastAPI,
    *,
    trust_path: Path | None = None,
    bundle_file: Callable[[str], Path] | None = None,
    live_poll_s: float = 0.5,
) -> None:
    """Adds the dashboard's pages, its static files, HTML error pages for browsers, and API
    docs whose scripts the controller serves (the default ones come from a CDN).

    `trust_path`: the controller's trust store, which the bundle page checks signers against;
    `bundle_file(digest)`: where a stored bundle's file is (its signatures are read there).
    """
    missing = missing_assets()
    if missing:
        log.warning(
            "event=dashboard_assets_missing files=%s fix=%r",
            ",".join(missing),
            "make setup (scripts/fetch-assets.sh)",
        )
    render = Renderer(make_environment())
    app.include_router(pages_router(render, trust_path, bundle_file))
    app.include_router(live_router(render, poll_s=live_poll_s))
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    _offline_docs(app)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, StarletteHTTPException):
            raise exc
        if not _is_page(request) or request.method not in ("GET", "HEAD"):
            return await http_exception_handler(request, exc)
        htmx = request.headers.get("HX-Request") == "true"
        if exc.status_code == 401:
            target = "/login?next=" + quote(request.url.path, safe="/")
            if htmx:
                return Response(status_code=401, headers={"HX-Redirect": target})
            return RedirectResponse(target, 303)
        detail = exc.detail
        if isinstance(detail, dict):
            detail = detail.get("detail", "")
        response = render.page(
            request, "error.html", exc.status_code, code=exc.status_code, detail=str(detail)
        )
        return response

    app.add_exception_handler(StarletteHTTPException, on_http_error)


def _offline_docs(app: FastAPI) -> None:
    """/docs with Swagger UI served from static/vendor; ReDoc (CDN only) is removed."""
    if app.docs_url is None or app.openapi_url is None:
        return
    drop = {app.docs_url, app.redoc_url}
    kept: list[BaseRoute] = [
        r for r in app.router.routes if not (isinstance(r, Route) and r.path in drop)
    ]
    app.router.routes[:] = kept
    openapi_url = app.openapi_url
    title = f"{app.title} - API"

    async def docs(_request: Request) -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=title,
            swagger_js_url="/static/vendor/swagger-ui-bundle.js",
            swagger_css_url="/static/vendor/swagger-ui.css",
            swagger_favicon_url="/static/favicon.svg",
        )

    app.add_route(app.docs_url, docs, include_in_schema=False)
