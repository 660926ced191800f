"""Inventory routes: groups (saved selectors), device tags and decommissioning, device targets
beside what devices run, bundle references, and operator commands (rollback, set-config,
restart-pipeline) to one device or a whole group."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select

from controller.api.params import Db
from controller.api.rollouts import refuse
from controller.db import Device
from controller.mqtt.commands import CommandSender
from controller.rollouts import inventory
from controller.rollouts.desired import Reconciler
from controller.rollouts.device_commands import (
    DeviceAction,
    check_config,
    send_action,
    targets_of,
)
from controller.rollouts.models import DeviceGroup, DeviceInventory
from controller.rollouts.spec import Selector


class GroupOut(BaseModel):
    name: str
    selector: dict[str, Any]
    created: float
    devices: list[str]


class TagsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    add: list[str] = Field(default_factory=list, max_length=64)
    remove: list[str] = Field(default_factory=list, max_length=64)


class InventoryOut(BaseModel):
    device: str
    tags: list[str]
    # declared in the device's own settings: they match selectors too, and only the device
    # changes them
    declared_tags: list[str]
    decommissioned: bool


class DecommissionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    decommissioned: bool = True


class TargetOut(BaseModel):
    device: str
    bundle: str
    rollout: str | None
    set_at: float
    cmd_id: str | None
    deployment_status: str | None
    active: str | None
    online: bool
    converged: bool
    drift: bool


class ActionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    config: dict[str, Any] | None = Field(None, description="set-config: the settings to apply")


class SentOut(BaseModel):
    device: str
    cmd_id: str | None
    error: str


class BundleRefOut(BaseModel):
    ref: str
    digest: str


def _group_out(db: Db, row: DeviceGroup) -> GroupOut:
    members = inventory.select_devices(db, Selector(group=row.name))
    return GroupOut(name=row.name, selector=row.selector, created=row.created, devices=members)


def _inventory_out(db: Db, device_id: str) -> InventoryOut:
    row = db.get(DeviceInventory, device_id)
    device = db.get(Device, device_id)
    return InventoryOut(
        device=device_id,
        tags=list(row.tags) if row else [],
        declared_tags=list(device.declared_tags) if device else [],
        decommissioned=bool(row and row.decommissioned is not None),
    )


def groups_router(reconciler: Reconciler, commands: CommandSender) -> APIRouter:
    router = APIRouter()

    @router.get("/api/groups")
    def list_groups(db: Db) -> list[GroupOut]:
        rows = db.scalars(select(DeviceGroup).order_by(DeviceGroup.name))
        return [_group_out(db, row) for row in rows]

    @router.get("/api/groups/{name}")
    def get_group(name: str, db: Db) -> GroupOut:
        row = db.get(DeviceGroup, name)
        if row is None:
            raise HTTPException(404, {"reason": "unknown_group", "detail": f"no group {name!r}"})
        return _group_out(db, row)

    @router.put("/api/groups/{name}")
    def put_group(name: str, selector: Selector, db: Db) -> GroupOut:
        try:
            row = inventory.save_group(db, name, selector, time.time())
            db.commit()
            return _group_out(db, row)
        except inventory.InventoryError as exc:
            refuse(exc)

    @router.delete("/api/groups/{name}", status_code=204)
    def delete_group(name: str, db: Db) -> None:
        try:
            inventory.delete_group(db, name)
            db.commit()
        except inventory.InventoryError as exc:
            refuse(exc)

    @router.get("/api/inventory/{device_id}")
    def get_inventory(device_id: str, db: Db) -> InventoryOut:
        try:
            targets_of(db, device_id, None)
        except inventory.InventoryError as exc:
            refuse(exc)
        return _inventory_out(db, device_id)

    @router.post("/api/devices/{device_id}/tags")
    def set_tags(device_id: str, body: TagsIn, db: Db) -> InventoryOut:
        try:
            inventory.set_tags(db, device_id, body.add, body.remove)
            db.commit()
        except inventory.InventoryError as exc:
            refuse(exc)
        return _inventory_out(db, device_id)

    @router.post("/api/devices/{device_id}/decommission")
    def decommission(device_id: str, db: Db, body: DecommissionIn | None = None) -> InventoryOut:
        try:
            inventory.set_decommissioned(db, device_id, body.decommissioned if body else True)
            db.commit()
        except inventory.InventoryError as exc:
            refuse(exc)
        return _inventory_out(db, device_id)

    @router.get("/api/targets")
    def list_targets(device: str | None = None, drift: bool = False) -> list[TargetOut]:
        found = reconciler.targets(device)
        return [
            TargetOut(**vars(t), converged=t.converged, drift=t.drift)
            for t in found
            if t.drift or not drift
        ]

    @router.get("/api/bundle-refs/{ref}")
    def resolve_bundle(ref: str, db: Db) -> BundleRefOut:
        try:
            return BundleRefOut(ref=ref, digest=inventory.resolve_bundle(db, ref))
        except inventory.InventoryError as exc:
            refuse(exc)

    def send(
        db: Db, device: str | None, group: str | None, action: DeviceAction, body: ActionIn | None
    ) -> list[SentOut]:
        config = body.config if body else None
        try:
            check_config(action, config)
        except ValidationError as exc:
            raise HTTPException(
                422, {"reason": "bad_config", "detail": exc.errors(include_url=False)}
            ) from None
        try:
            devices = targets_of(db, device, group)
        except inventory.InventoryError as exc:
            refuse(exc)
        db.close()
        return [SentOut(**vars(s)) for s in send_action(commands, devices, action, config)]

    for action in DeviceAction:
        device_route, group_route = _action_routes(send, action)
        router.add_api_route(
            f"/api/devices/{{device_id}}/{action.value}",
            device_route,
            methods=["POST"],
            status_code=202,
            name=f"device_{action.name.lower()}",
        )
        router.add_api_route(
            f"/api/groups/{{name}}/{action.value}",
            group_route,
            methods=["POST"],
            status_code=202,
            name=f"group_{action.name.lower()}",
        )

    return router


_Send = Callable[[Db, str | None, str | None, DeviceAction, ActionIn | None], list[SentOut]]


def _action_routes(send: _Send, action: DeviceAction) -> tuple[Callable[..., Any], ...]:
    """The per-device and per-group endpoints of one action."""

    def device_route(device_id: str, db: Db, body: ActionIn | None = None) -> list[SentOut]:
        return send(db, device_id, None, action, body)

    def group_route(name: str, db: Db, body: ActionIn | None = None) -> list[SentOut]:
        return send(db, None, name, action, body)

    return device_route, group_route
