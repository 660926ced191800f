"""Who may call which route, applied to the whole app in one place.

`authorize` is a dependency of the app itself, so every route of every router, including
routers added later, needs an operator unless its tags say otherwise:

- `PUBLIC`: no credentials (health probe, login, the first admin's one-time secret);
- `DEVICE`: device-facing; the route checks its own device credential (a transfer token from
  the command the controller sent, later a client certificate), never an operator's;
- `METRICS`: open to loopback clients when settings allow, else a viewer;
- `SELF`: any signed-in operator (their own session and tokens);
- `ADMIN`: an admin (users, everyone's tokens, the audit log);
- no tag: GET/HEAD need a viewer, every other method an operator.

An operator proves who they are with `Authorization: Bearer ef_...` (an API token) or the
session cookie; a cookie-authenticated unsafe request must also carry the session's CSRF token
in `X-CSRF-Token`.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from fastapi import HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from controller.auth.audit import AuditRecord, record
from controller.auth.ratelimit import LoginLimiter
from controller.auth.tokens import Principal, csrf_matches, session_principal, token_principal
from controller.auth.transfer import TransferGrant, TransferTokens
from controller.auth.users import Role
from controller.settings import AuthSettings
from protocol.messages import TRANSFER_TOKEN_HEADER

log = logging.getLogger(__name__)

PUBLIC = "public"
DEVICE = "device"
METRICS = "metrics"
SELF = "self"
ADMIN = "admin"

SESSION_COOKIE = "edgefleet_session"
CSRF_COOKIE = "edgefleet_csrf"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")


@dataclass
class AuthContext:
    """What the guards need: the database, the settings, the login limiter, transfer tokens."""

    sessions: sessionmaker[Session]
    settings: AuthSettings
    transfer: TransferTokens
    limiter: LoginLimiter = field(default_factory=LoginLimiter)


def refuse(status: int, reason: str, detail: str, **headers: str) -> HTTPException:
    """An HTTPException whose detail carries a stable reason code."""
    return HTTPException(status, {"reason": reason, "detail": detail}, headers=headers or None)


def _auth(request: Request) -> AuthContext:
    ctx: AuthContext = request.app.state.auth
    return ctx


def client_address(request: Request) -> str:
    return request.client.host if request.client is not None else ""


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _route_tags(request: Request) -> set[str]:
    route = request.scope.get("route")
    return {str(tag) for tag in getattr(route, "tags", None) or ()}


def _needed_role(request: Request, tags: set[str]) -> Role | None:
    """The role a route needs; None: any signed-in operator."""
    if ADMIN in tags:
        return Role.ADMIN
    if SELF in tags:
        return None
    return Role.VIEWER if request.method in SAFE_METHODS else Role.OPERATOR


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


def authenticate(request: Request) -> Principal | None:
    """Who the request is from (API token first, then the session cookie), or None.

    Raises HTTPException(401) for a malformed Authorization header.
    """
    auth = _auth(request)
    bearer = _bearer(request)
    with auth.sessions() as db:
        if bearer is not None:
            if not bearer:
                raise refuse(401, "bad_credentials", "Authorization must be `Bearer <token>`")
            principal = token_principal(db, bearer)
        else:
            cookie = request.cookies.get(SESSION_COOKIE)
            principal = session_principal(db, cookie) if cookie else None
        db.commit()  # a token's last use
    return principal


def authorize(request: Request) -> None:
    """The app-wide guard (see the module docstring); stores the principal on request.state.

    Raises HTTPException 401 (no or bad credentials), 403 (role too low, CSRF token missing
    or wrong).
    """
    tags = _route_tags(request)
    if PUBLIC in tags or DEVICE in tags:
        return
    auth = _auth(request)
    if (
        METRICS in tags
        and auth.settings.metrics_open_on_loopback
        and _is_loopback(client_address(request))
    ):
        return
    principal = authenticate(request)
    if principal is None:
        raise refuse(
            401,
            "not_authenticated",
            "sign in or send an API token",
            **{"WWW-Authenticate": "Bearer"},
        )
    request.state.principal = principal
    if principal.by_cookie and request.method not in SAFE_METHODS:
        given = request.headers.get(CSRF_HEADER)
        if not given:
            raise refuse(403, "csrf_missing", f"a signed-in browser sends {CSRF_HEADER}")
        if not csrf_matches(principal.csrf, given):
            raise refuse(403, "csrf_mismatch", f"{CSRF_HEADER} does not match the session")
    needed = _needed_role(request, tags)
    if needed is not None and not principal.role.allows(needed):
        raise refuse(
            403, "forbidden", f"needs the {needed} role; {principal.name} is a {principal.role}"
        )


def principal_of(request: Request) -> Principal:
    """The principal `authorize` stored; raises HTTPException(401) when there is none."""
    principal: Principal | None = getattr(request.state, "principal", None)
    if principal is None:
        raise refuse(401, "not_authenticated", "sign in or send an API token")
    return principal


def device_grant(request: Request, purpose: str, obj: str) -> TransferGrant:
    """The transfer grant of a device-facing request for `purpose` on `obj`.

    Raises HTTPException(401) when the token is missing, forged, expired or for another object.
    """
    token = request.headers.get(TRANSFER_TOKEN_HEADER)
    if not token:
        raise refuse(401, "no_transfer_token", f"send the command's {TRANSFER_TOKEN_HEADER}")
    grant = _auth(request).transfer.check(token, purpose, obj)
    if grant is None:
        raise refuse(401, "bad_transfer_token", "the transfer token is not valid for this")
    request.state.actor = f"device:{grant.device}"
    return grant


def device_or_viewer(request: Request, purpose: str, obj: str) -> None:
    """A device with a transfer token for `purpose` on `obj`, or an operator with a viewer role.

    Raises HTTPException 401, 403.
    """
    if request.headers.get(TRANSFER_TOKEN_HEADER):
        device_grant(request, purpose, obj)
        return
    principal = authenticate(request)
    if principal is None:
        raise refuse(401, "not_authenticated", f"send {TRANSFER_TOKEN_HEADER} or an API token")
    request.state.principal = principal


# ---- middlewares ----------------------------------------------------------------------------


def allowed_hosts(settings: AuthSettings, public_url: str | None) -> list[str]:
    """Host names the API answers: loopback, public_url's host, and the configured ones."""
    hosts = list(LOOPBACK_NAMES)
    if public_url:
        host = public_url.split("://", 1)[-1].split("/", 1)[0].rsplit("@", 1)[-1]
        hosts.append(host.rsplit(":", 1)[0] if not host.endswith("]") else host)
    hosts.extend(settings.allowed_hosts)
    return sorted(set(hosts))


async def _send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    payload = json.dumps({"detail": body}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, {"reason": "body_too_large", "detail": f"over {limit} bytes"})


BodyLimitRule = Callable[[str, str], int | None]
"""(method, path) -> the route's own cap in bytes, or None for the default."""


class BodyLimit:
    """Refuses a request body over its cap: by Content-Length before a byte is read, and by
    counting when the body comes chunked."""

    def __init__(self, app: ASGIApp, default: int, rules: Iterable[BodyLimitRule] = ()) -> None:
        self.app = app
        self.default = default
        self.rules = list(rules)

    def limit(self, method: str, path: str) -> int:
        for rule in self.rules:
            cap = rule(method, path)
            if cap is not None:
                return cap
        return self.default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        limit = self.limit(scope["method"], scope["path"])
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            reason = "body_too_large" if length.isdigit() else "bad_content_length"
            await _send_json(
                send,
                413 if length.isdigit() else 400,
                {"reason": reason, "detail": f"the body may have at most {limit} bytes"},
            )
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, counted, send)


AuditWriter = Callable[[AuditRecord], Awaitable[None]]


class AuditTrail:
    """Writes one audit row for every mutating request once it is answered: who (operator,
    device or `-`), the route, its path parameters, the status, the client address."""

    def __init__(self, app: ASGIApp, sessions: sessionmaker[Session]) -> None:
        self.app = app
        self.sessions = sessions

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})
        status = 500
        written = False

        async def write() -> None:
            nonlocal written
            if written:
                return
            written = True
            entry = _audit_record(scope, status)
            try:
                await run_in_threadpool(self._write, entry)
            except Exception:  # a lost row is logged; the request's own answer still goes out
                log.exception("event=audit_write_failed action=%s", entry.action)

        async def watched(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                # the row is committed before the client has the whole answer, so whoever
                # reads the audit log right after an answer finds it
                await write()
            await send(message)

        try:
            await self.app(scope, receive, watched)
        finally:
            await write()

    def _write(self, entry: AuditRecord) -> None:
        with self.sessions() as db:
            record(db, entry)
            db.commit()
        log.info(
            "event=audit actor=%s method=%s action=%s target=%s status=%d client=%s",
            entry.actor,
            entry.method,
            entry.action,
            entry.target or "-",
            entry.status,
            entry.client or "-",
        )


def _audit_record(scope: Scope, status: int) -> AuditRecord:
    state = scope.get("state") or {}
    principal = state.get("principal")
    actor = principal.name if isinstance(principal, Principal) else state.get("actor", "-")
    detail = principal.via if isinstance(principal, Principal) else ""
    route = scope.get("route")
    action = getattr(route, "path", None) or scope.get("path", "")
    params = scope.get("path_params") or {}
    target = " ".join(f"{key}={value}" for key, value in sorted(params.items()))
    client = scope.get("client")
    return AuditRecord(
        actor=str(actor),
        method=str(scope["method"]),
        action=str(action),
        target=target,
        status=status,
        client=str(client[0]) if client else "",
        detail=detail,
    )
