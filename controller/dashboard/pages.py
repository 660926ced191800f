"""The dashboard's pages: server-rendered HTML over the same database as the API.

Pages are GET routes of the app, so the app-wide guard (controller.api.security) signs them in:
a viewer reads every page but the admin ones, and no page changes anything. Every action button
posts to the API's own routes, where the guard checks the role and the CSRF token again.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from controller.api.security import ADMIN, PUBLIC, authenticate, principal_of
from controller.auth.audit import AuditQuery
from controller.auth.audit import query as audit_query
from controller.auth.enrollment import IdentityRecord
from controller.auth.tokens import Principal, list_tokens
from controller.auth.users import Role, list_users
from controller.dashboard import charts, queries
from controller.dashboard.bundles import Signatures, bundle_signatures
from controller.db import Bundle
from controller.rollouts import views
from controller.rollouts.models import DeviceGroup
from controller.rollouts.states import RolloutError

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
SNAPSHOT_ID = re.compile(r"^[0-9a-f]{32}$")
# the pages load scripts and styles from the controller only; nothing inline runs
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def _ago(ts: float | None) -> str:
    if ts is None:
        return "-"
    delta = time.time() - ts
    if delta < 0:
        return "in the future"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if delta >= size:
            return f"{delta / size:.0f} {unit} ago"
    return f"{delta:.0f} s ago"


def _size(n: int | float | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def _segment(value: Any) -> str:
    """A value as one URL path segment: every reserved character encoded."""
    return quote(str(value), safe="")


def make_environment(directory: Path = TEMPLATES) -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(directory)),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(when=_when, ago=_ago, size=_size, seg=_segment, short=lambda d: str(d)[:12])
    return env


@dataclass(frozen=True)
class Viewer:
    """Who is looking, as the templates need it."""

    name: str
    role: str
    csrf: str | None
    can_operate: bool
    is_admin: bool

    @classmethod
    def of(cls, principal: Principal) -> Viewer:
        return cls(
            name=principal.name,
            role=principal.role.value,
            csrf=principal.csrf,
            can_operate=principal.role.allows(Role.OPERATOR),
            is_admin=principal.role.allows(Role.ADMIN),
        )


class Renderer:
    def __init__(self, env: Environment) -> None:
        self.env = env

    def fragment(self, name: str, **context: Any) -> str:
        return self.env.get_template(name).render(**context)

    def page(self, request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        principal = getattr(request.state, "principal", None)
        viewer = Viewer.of(principal) if isinstance(principal, Principal) else None
        html = self.fragment(name, me=viewer, path=request.url.path, **context)
        return HTMLResponse(html, status, headers=page_headers())


def page_headers() -> dict[str, str]:
    return {
        "Content-Security-Policy": CSP,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",
        "Cache-Control": "no-store",
    }


def _db(request: Request) -> Iterator[Session]:
    sessions: sessionmaker[Session] = request.app.state.sessions
    with sessions() as session:
        yield session


Db = Annotated[Session, Depends(_db)]


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a path on this site only."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _bundle_choices(db: Session) -> list[tuple[str, str, int]]:
    """(digest, name, version) of every bundle, newest version of each name first."""
    rows = db.execute(
        select(Bundle.digest, Bundle.name, Bundle.version).order_by(
            Bundle.name, Bundle.version.desc()
        )
    )
    return [(digest, name, version) for digest, name, version in rows]


def pages_router(
    render: Renderer,
    trust_path: Path | None = None,
    bundle_file: Callable[[str], Path] | None = None,
) -> APIRouter:
    """Every page; hidden from the API schema. The bundle page reads signatures from the file
    `bundle_file(digest)` names and checks their keys against the trust store at `trust_path`."""
    router = APIRouter(include_in_schema=False)

    @router.get("/login", tags=[PUBLIC])
    def login(request: Request, next: str | None = None) -> Response:
        if authenticate(request) is not None:
            return RedirectResponse(safe_next(next), 303)
        return render.page(request, "login.html", next=safe_next(next))

    @router.get("/")
    def fleet(request: Request, db: Db) -> Response:
        return render.page(request, "fleet.html", fleet=queries.fleet(db))

    @router.get("/devices")
    def devices(
        request: Request,
        db: Db,
        q: str = "",
        status: str = "",
        profile: str = "",
        runtime: str = "",
        tag: str = "",
        group: str = "",
        sort: str = "id",
        desc: bool = False,
        page: Annotated[int, Query(ge=1)] = 1,
        per_page: Annotated[int, Query(ge=1, le=queries.MAX_PER_PAGE)] = queries.PER_PAGE,
    ) -> Response:
        f = queries.DeviceFilter(
            q.strip()[:128],
            status,
            profile,
            runtime,
            tag.strip()[:64],
            group,
            sort if sort in queries.SORTS else "id",
            desc,
            page,
            per_page,
        )
        result = queries.device_page(db, f)
        context: dict[str, Any] = {
            "f": f,
            "result": result,
            "qs": lambda **kw: urlencode(f.query(**kw)),
        }
        if request.headers.get("HX-Request") == "true":
            html = render.fragment("devices_table.html", **context)
            return HTMLResponse(html, headers=page_headers())
        return render.page(
            request,
            "devices.html",
            choices=queries.filter_choices(db),
            sorts=queries.SORTS,
            **context,
        )

    def _detail(db: Session, device_id: str) -> queries.DeviceDetail:
        detail = queries.device_detail(db, device_id, time.time())
        if detail is None:
            raise HTTPException(404, f"no device {device_id!r}")
        return detail

    def _device_context(db: Session, detail: queries.DeviceDetail) -> dict[str, Any]:
        h = detail.history
        series = [
            charts.line_chart("frames per second", "fps", [(p.ts, p.fps) for p in h]),
            charts.line_chart("inference", "ms", [(p.ts, p.inference_ms) for p in h]),
            charts.line_chart("temperature", "°C", [(p.ts, p.temperature_c) for p in h]),
            charts.line_chart("CPU", "%", [(p.ts, p.cpu_percent) for p in h]),
            charts.line_chart("memory", "%", [(p.ts, p.mem_percent) for p in h]),
            charts.line_chart("throttled", "", [(p.ts, 1.0 if p.throttled else 0.0) for p in h]),
        ]
        bundles = _bundle_choices(db)
        after = max((d.received for d in detail.detections), default=time.time())
        return {
            "d": detail,
            "dev": detail.device,
            "charts": series,
            "bundles": bundles,
            "after": after,
            "snapshot_id": SNAPSHOT_ID,
        }

    @router.get("/devices/{device_id}")
    def device(request: Request, device_id: str, db: Db) -> Response:
        detail = _detail(db, device_id)
        return render.page(request, "device.html", **_device_context(db, detail))

    @router.get("/devices/{device_id}/state")
    def device_state(request: Request, device_id: str, db: Db) -> Response:
        detail = _detail(db, device_id)
        me = Viewer.of(principal_of(request))
        html = render.fragment("device_state.html", me=me, d=detail, dev=detail.device)
        return HTMLResponse(html, headers=page_headers())

    @router.get("/bundles")
    def bundles(request: Request, db: Db) -> Response:
        rows = list(db.scalars(select(Bundle).order_by(Bundle.created.desc()).limit(500)))
        return render.page(request, "bundles.html", bundles=rows)

    @router.get("/bundles/{digest}")
    def bundle(request: Request, digest: str, db: Db) -> Response:
        row = db.get(Bundle, digest)
        if row is None:
            raise HTTPException(404, f"no bundle {digest!r}")
        signatures = (
            bundle_signatures(bundle_file(row.digest), trust_path)
            if bundle_file is not None
            else Signatures([], None, "the bundle files are not at hand here")
        )
        return render.page(request, "bundle.html", b=row, m=row.manifest or {}, sigs=signatures)

    @router.get("/rollouts")
    def rollouts(request: Request, db: Db) -> Response:
        return render.page(
            request,
            "rollouts.html",
            rollouts=views.list_rollouts(db, 200),
            bundles=_bundle_choices(db),
            groups=list(db.scalars(select(DeviceGroup.name).order_by(DeviceGroup.name))),
        )

    def _rollout_context(db: Session, rollout_id: str) -> dict[str, Any]:
        try:
            rollout = views.get_rollout(db, rollout_id)
        except RolloutError:
            raise HTTPException(404, f"no rollout {rollout_id!r}") from None
        return {
            "r": rollout,
            "timeline": views.timeline(db, rollout_id),
            "members": views.members(db, rollout_id),
        }

    @router.get("/rollouts/{rollout_id}")
    def rollout(request: Request, rollout_id: str, db: Db) -> Response:
        return render.page(request, "rollout.html", **_rollout_context(db, rollout_id))

    @router.get("/rollouts/{rollout_id}/panel")
    def rollout_panel(request: Request, rollout_id: str, db: Db) -> Response:
        me = Viewer.of(principal_of(request))
        html = render.fragment("rollout_panel.html", me=me, **_rollout_context(db, rollout_id))
        return HTMLResponse(html, headers=page_headers())

    @router.get("/audit", tags=[ADMIN])
    def audit(
        request: Request,
        db: Db,
        actor: str = "",
        before_id: int | None = None,
    ) -> Response:
        rows = audit_query(db, AuditQuery(actor=actor or None, before_id=before_id, limit=100))
        return render.page(request, "audit.html", rows=rows, actor=actor)

    @router.get("/users", tags=[ADMIN])
    def users(request: Request, db: Db) -> Response:
        users_ = list_users(db)
        names = {u.id: u.name for u in users_}
        tokens = [(row, names.get(row.user_id, "?")) for row in list_tokens(db, None)]
        return render.page(request, "users.html", users=users_, tokens=tokens)

    @router.get("/enrollment")
    def enrollment(request: Request, db: Db) -> Response:
        rows = list(
            db.scalars(select(IdentityRecord).order_by(IdentityRecord.updated.desc()).limit(500))
        )
        return render.page(request, "enrollment.html", identities=rows)

    return router
