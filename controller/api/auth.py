"""Routes for operators' accounts: login and logout (session cookie + CSRF token), API tokens,
users (admin) and the audit log (admin), and the first admin's one-time secret."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import RedirectResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from controller.api.params import Db
from controller.api.security import (
    ADMIN,
    CSRF_COOKIE,
    PUBLIC,
    SELF,
    SESSION_COOKIE,
    AuthContext,
    client_address,
    principal_of,
    refuse,
)
from controller.auth.audit import MAX_PAGE, AuditQuery, query
from controller.auth.bootstrap import redeem_bootstrap_secret
from controller.auth.models import ApiToken, AuditEntry, User
from controller.auth.tokens import (
    close_session,
    issue_token,
    list_tokens,
    open_session,
    revoke_token,
    spend_login_link,
)
from controller.auth.users import (
    Role,
    UserError,
    check_password,
    create_user,
    get_user,
    list_users,
    set_disabled,
    set_password,
    set_role,
)

RoleName = Literal["viewer", "operator", "admin"]
Name = Annotated[str, Field(min_length=1, max_length=64)]
Password = Annotated[str, Field(min_length=1, max_length=1024)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoginIn(_In):
    name: Name
    password: Password


class TokenLoginIn(LoginIn):
    token_name: Name = "cli"  # noqa: S105 - a label, not a secret
    role: RoleName | None = None
    ttl_s: Annotated[float, Field(gt=0, le=366 * 86400)] | None = None


class BootstrapIn(_In):
    secret: Annotated[str, Field(min_length=1, max_length=256)]
    name: Name
    password: Password


class UserIn(_In):
    name: Name
    password: Password
    role: RoleName = "viewer"


class UserPatch(_In):
    role: RoleName | None = None
    disabled: bool | None = None
    password: Password | None = None


class TokenIn(_In):
    name: Name
    role: RoleName | None = None
    ttl_s: Annotated[float, Field(gt=0, le=366 * 86400)] | None = None


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class MeOut(BaseModel):
    name: str
    role: str
    via: str
    csrf_token: str | None = None


class UserOut(_Out):
    name: str
    role: str
    disabled: bool
    created: float
    updated: float


class TokenOut(BaseModel):
    id: str
    name: str
    user: str
    role: str
    created: float
    expires: float
    revoked: float | None
    last_used: float | None

    @classmethod
    def of(cls, row: ApiToken, user: str) -> TokenOut:
        return cls(
            id=row.id,
            name=row.name,
            user=user,
            role=row.role,
            created=row.created,
            expires=row.expires,
            revoked=row.revoked,
            last_used=row.last_used,
        )


class NewTokenOut(TokenOut):
    token: str = Field(description="the secret; shown only now")


class AuditOut(_Out):
    id: int
    ts: float
    actor: str
    method: str
    action: str
    target: str
    status: int
    client: str
    detail: str


def _auth(request: Request) -> AuthContext:
    ctx: AuthContext = request.app.state.auth
    return ctx


def _user_error(exc: UserError) -> Exception:
    status = {
        "no_user": 404,
        "no_token": 404,
        "user_exists": 409,
        "last_admin": 409,
        "scope_too_wide": 403,
        "bootstrap_refused": 403,
    }.get(exc.reason, 422)
    return refuse(status, exc.reason, exc.detail)


def _set_session_cookies(
    request: Request, response: Response, cookie: str, csrf: str, ttl_s: float
) -> None:
    secure = request.url.scheme == "https"
    response.set_cookie(
        SESSION_COOKIE,
        cookie,
        max_age=int(ttl_s),
        httponly=True,
        samesite="strict",
        secure=secure,
        path="/",
    )
    # readable by the page's script (double-submit); the server checks it against the session
    response.set_cookie(
        CSRF_COOKIE, csrf, max_age=int(ttl_s), httponly=False, samesite="strict", secure=secure
    )


def _checked_login(request: Request, db: Session, name: str, password: str) -> User:
    """The user when `password` is theirs; raises 429 while rate limited, 401 when wrong."""
    auth = _auth(request)
    client = client_address(request)
    wait = auth.limiter.retry_after(name, client)
    if wait > 0:
        raise refuse(
            429,
            "too_many_attempts",
            "too many failed logins; wait",
            **{"Retry-After": str(int(wait) + 1)},
        )
    user = check_password(db, name, password)
    if user is None:
        auth.limiter.failed(name, client)
        request.state.actor = f"login:{name[:64]}"
        raise refuse(401, "bad_login", "wrong user name or password, or the user is disabled")
    auth.limiter.succeeded(name)
    request.state.actor = user.name
    return user


def _token_out(db: Session, row: ApiToken) -> TokenOut:
    user = db.get(User, row.user_id)
    return TokenOut.of(row, user.name if user is not None else "?")


def _new_token(
    db: Session, user: User, name: str, role: RoleName | None, ttl_s: float | None, default: float
) -> NewTokenOut:
    try:
        row, secret = issue_token(db, user, name, Role(role or user.role), ttl_s or default)
    except UserError as exc:
        raise _user_error(exc) from None
    out = TokenOut.of(row, user.name)
    return NewTokenOut(**out.model_dump(), token=secret)


def _me(db: Session, request: Request) -> User:
    principal = principal_of(request)
    user = db.get(User, principal.user_id)
    if user is None:
        raise refuse(401, "not_authenticated", "the user is gone")
    return user


def auth_router() -> APIRouter:
    """Login, logout, me, API tokens, users and the audit log."""
    router = APIRouter()

    @router.post("/api/auth/login", tags=[PUBLIC])
    def login(body: LoginIn, request: Request, response: Response, db: Db) -> MeOut:
        """Sign in a browser: sets the HttpOnly session cookie and answers the CSRF token."""
        user = _checked_login(request, db, body.name, body.password)
        ttl = _auth(request).settings.session_ttl_s
        session, cookie = open_session(db, user, ttl, client_address(request))
        db.commit()
        _set_session_cookies(request, response, cookie, session.csrf, ttl)
        return MeOut(name=user.name, role=user.role, via="session", csrf_token=session.csrf)

    @router.get("/api/auth/link", tags=[PUBLIC], response_class=RedirectResponse)
    def login_link(token: str, request: Request, db: Db) -> RedirectResponse:
        """Sign in a browser with a one-time login link (the demo prints one): the link's
        token is spent by this first use; the answer sets the session and opens the fleet."""
        auth = _auth(request)
        client = client_address(request)
        if auth.limiter.clients.retry_after(client) > 0:
            raise refuse(429, "too_many_attempts", "too many failed sign-ins from here; wait")
        user = spend_login_link(db, token[:200])
        if user is None or user.disabled:
            auth.limiter.clients.fail(client)
            raise refuse(401, "bad_link", "the login link is unknown, expired or already used")
        request.state.actor = user.name
        ttl = auth.settings.session_ttl_s
        session, cookie = open_session(db, user, ttl, client)
        db.commit()
        response = RedirectResponse("/", status_code=303)
        _set_session_cookies(request, response, cookie, session.csrf, ttl)
        return response

    @router.post("/api/auth/token", tags=[PUBLIC], status_code=201)
    def login_token(body: TokenLoginIn, request: Request, db: Db) -> NewTokenOut:
        """Sign in a command line: answers a new API token (shown once)."""
        user = _checked_login(request, db, body.name, body.password)
        out = _new_token(
            db, user, body.token_name, body.role, body.ttl_s, _auth(request).settings.token_ttl_s
        )
        db.commit()
        return out

    @router.post("/api/auth/bootstrap", tags=[PUBLIC], status_code=201)
    def bootstrap(body: BootstrapIn, request: Request, db: Db) -> NewTokenOut:
        """Create the first admin with the one-time secret from the controller's log."""
        auth = _auth(request)
        client = client_address(request)
        if auth.limiter.clients.retry_after(client) > 0:
            raise refuse(429, "too_many_attempts", "too many failed attempts; wait")
        try:
            user = redeem_bootstrap_secret(db, body.secret, body.name, body.password)
        except UserError as exc:
            db.rollback()
            if exc.reason == "bootstrap_refused":
                auth.limiter.clients.fail(client)
            raise _user_error(exc) from None
        request.state.actor = user.name
        out = _new_token(db, user, "bootstrap", None, None, auth.settings.token_ttl_s)
        db.commit()
        return out

    @router.post("/api/auth/logout", tags=[SELF], status_code=204)
    def logout(request: Request, response: Response, db: Db) -> None:
        principal_of(request)
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie:
            close_session(db, cookie)
            db.commit()
        response.delete_cookie(SESSION_COOKIE, path="/")
        response.delete_cookie(CSRF_COOKIE)

    @router.get("/api/auth/me", tags=[SELF])
    def me(request: Request) -> MeOut:
        p = principal_of(request)
        return MeOut(name=p.name, role=p.role.value, via=p.via, csrf_token=p.csrf)

    @router.get("/api/auth/csrf", tags=[SELF])
    def csrf(request: Request) -> dict[str, str | None]:
        """The CSRF token of the signed-in browser session (null for API tokens)."""
        return {"csrf_token": principal_of(request).csrf, "header": "X-CSRF-Token"}

    @router.get("/api/tokens", tags=[SELF])
    def tokens(request: Request, db: Db, all: bool = False) -> list[TokenOut]:
        """The caller's tokens; an admin may ask for everyone's with `all=true`."""
        user = _me(db, request)
        if all and not principal_of(request).role.allows(Role.ADMIN):
            raise refuse(403, "forbidden", "only an admin lists everyone's tokens")
        return [_token_out(db, t) for t in list_tokens(db, None if all else user)]

    @router.post("/api/tokens", tags=[SELF], status_code=201)
    def create_token(body: TokenIn, request: Request, db: Db) -> NewTokenOut:
        """A new token for the caller, with a role no higher than the caller's."""
        user = _me(db, request)
        role = body.role or principal_of(request).role.value
        if not principal_of(request).role.allows(Role(role)):
            raise refuse(403, "scope_too_wide", f"cannot make a {role} token with this login")
        out = _new_token(db, user, body.name, role, body.ttl_s, _auth(request).settings.token_ttl_s)
        db.commit()
        return out

    @router.delete("/api/tokens/{token_id}", tags=[SELF])
    def delete_token(token_id: str, request: Request, db: Db) -> TokenOut:
        """Revoke a token: the caller's own, or anyone's for an admin."""
        user = _me(db, request)
        owner = None if principal_of(request).role.allows(Role.ADMIN) else user
        try:
            row = revoke_token(db, token_id, owner=owner)
        except UserError as exc:
            raise _user_error(exc) from None
        db.commit()
        return _token_out(db, row)

    @router.get("/api/users", tags=[ADMIN])
    def users(db: Db) -> list[UserOut]:
        return [UserOut.model_validate(u) for u in list_users(db)]

    @router.post("/api/users", tags=[ADMIN], status_code=201)
    def add_user(body: UserIn, db: Db) -> UserOut:
        try:
            user = create_user(db, body.name, body.password, Role(body.role))
        except UserError as exc:
            raise _user_error(exc) from None
        db.commit()
        return UserOut.model_validate(user)

    @router.patch("/api/users/{name}", tags=[ADMIN])
    def change_user(name: str, body: UserPatch, db: Db) -> UserOut:
        """Change a user's role, disable or enable them, or set their password."""
        try:
            user = get_user(db, name)
            if body.role is not None:
                set_role(db, user, Role(body.role))
            if body.disabled is not None:
                set_disabled(db, user, body.disabled)
            if body.password is not None:
                set_password(db, user, body.password)
        except UserError as exc:
            db.rollback()
            raise _user_error(exc) from None
        db.commit()
        return UserOut.model_validate(user)

    @router.get("/api/audit", tags=[ADMIN])
    def audit(
        db: Db,
        actor: str | None = None,
        action: str | None = None,
        method: str | None = None,
        target: str | None = None,
        status: int | None = None,
        since: float | None = None,
        until: float | None = None,
        before_id: int | None = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    ) -> list[AuditOut]:
        """Audit rows, newest first; the next page is `before_id=<last id of this page>`."""
        q = AuditQuery(actor, action, method, target, status, since, until, before_id, limit)
        rows: list[AuditEntry] = query(db, q)
        return [AuditOut.model_validate(r) for r in rows]

    return router
