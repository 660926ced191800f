"""Rollout routes: create, list, show (with per-wave progress, members and timeline), and the
operator's actions: pause, resume, approve, cancel, abort (keep or revert)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from controller.api.params import Db, Limit
from controller.rollouts import views
from controller.rollouts.engine import RolloutEngine
from controller.rollouts.inventory import InventoryError
from controller.rollouts.spec import RolloutSpec, Selector
from controller.rollouts.states import InvalidTransition, RolloutError


class RolloutIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128)
    bundle: str = Field(description="name@version, or a unique digest prefix")
    selector: Selector = Field(default_factory=Selector)
    spec: RolloutSpec = Field(default_factory=RolloutSpec)
    start_at: float | None = Field(None, ge=0, description="unix time to start; empty: now")


class AbortIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    revert: bool = False


class WaveOut(BaseModel):
    index: int
    total: int
    counts: dict[str, int]


class RolloutOut(BaseModel):
    id: str
    name: str
    bundle: str
    bundle_ref: str
    state: str
    reason: str
    wave: int
    selector: dict[str, Any]
    spec: dict[str, Any]
    start_at: float | None
    created: float
    updated: float
    waves: list[WaveOut]


class TimelineOut(BaseModel):
    ts: float
    state: str
    reason: str
    data: dict[str, Any]


class MemberOut(BaseModel):
    device: str
    wave: int
    state: str
    previous: str | None
    cmd_id: str | None
    offered_at: float | None
    finished_at: float | None
    reason: str


def _out(view: views.RolloutView) -> RolloutOut:
    return RolloutOut(
        **{k: v for k, v in vars(view).items() if k != "waves"},
        waves=[WaveOut(index=w.index, total=w.total, counts=w.counts) for w in view.waves],
    )


def refuse(exc: RolloutError | InventoryError) -> NoReturn:
    """The HTTP error for a refused rollout or inventory request, with its reason code."""
    status = (
        404 if isinstance(exc, LookupError) else 409 if isinstance(exc, InvalidTransition) else 422
    )
    raise HTTPException(status, {"reason": exc.code, "detail": str(exc)}) from None


def rollouts_router(engine: RolloutEngine) -> APIRouter:
    router = APIRouter()

    @router.post("/api/rollouts", status_code=201)
    def create_rollout(body: RolloutIn, db: Db) -> RolloutOut:
        try:
            rollout_id = engine.create(
                body.name, body.bundle, body.selector, body.spec, start_at=body.start_at
            )
            return _out(views.get_rollout(db, rollout_id))
        except (RolloutError, InventoryError) as exc:
            refuse(exc)

    @router.get("/api/rollouts")
    def list_rollouts(db: Db, limit: Limit = 100) -> list[RolloutOut]:
        return [_out(v) for v in views.list_rollouts(db, limit)]

    @router.get("/api/rollouts/{rollout_id}")
    def get_rollout(rollout_id: str, db: Db) -> RolloutOut:
        try:
            return _out(views.get_rollout(db, rollout_id))
        except RolloutError as exc:
            refuse(exc)

    @router.get("/api/rollouts/{rollout_id}/timeline")
    def get_timeline(rollout_id: str, db: Db) -> list[TimelineOut]:
        try:
            views.get_rollout(db, rollout_id)
        except RolloutError as exc:
            refuse(exc)
        return [TimelineOut(**vars(e)) for e in views.timeline(db, rollout_id)]

    @router.get("/api/rollouts/{rollout_id}/devices")
    def get_members(rollout_id: str, db: Db) -> list[MemberOut]:
        try:
            views.get_rollout(db, rollout_id)
        except RolloutError as exc:
            refuse(exc)
        return [MemberOut(**vars(m)) for m in views.members(db, rollout_id)]

    def action(name: str, run: Callable[[str], None]) -> None:
        @router.post(f"/api/rollouts/{{rollout_id}}/{name}", name=f"rollout_{name}")
        def act(rollout_id: str, db: Db) -> RolloutOut:
            try:
                run(rollout_id)
                return _out(views.get_rollout(db, rollout_id))
            except RolloutError as exc:
                refuse(exc)

    action("pause", engine.pause)
    action("resume", engine.resume)
    action("approve", engine.approve)
    action("cancel", engine.cancel)

    @router.post("/api/rollouts/{rollout_id}/abort")
    def abort(rollout_id: str, db: Db, body: AbortIn | None = None) -> RolloutOut:
        try:
            engine.abort(rollout_id, revert=bool(body and body.revert))
            return _out(views.get_rollout(db, rollout_id))
        except RolloutError as exc:
            refuse(exc)

    return router
