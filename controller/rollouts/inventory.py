"""Inventory: tags, groups as saved selectors, decommissioning, and bundle references.

A selector is matched against what devices report (profile, runtimes, agent version, active
bundle, online) and what operators say about them (tags, decommissioned). Decommissioned devices
match no selector. Bundles are named `name@version` or by a unique prefix of their digest.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from controller.db import Bundle, Device
from controller.rollouts.models import DeviceGroup, DeviceInventory
from controller.rollouts.spec import Selector

_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:=-]{0,63}$")
_GROUP = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_REF = re.compile(r"^(?P<name>[A-Za-z0-9_.-]+)@(?P<version>\d+)$")
_PREFIX = re.compile(r"^[0-9a-f]{4,64}$")


class InventoryError(ValueError):
    """Bad inventory input; `code` says which kind."""

    code = "invalid"


class UnknownGroup(InventoryError, LookupError):
    code = "unknown_group"


class UnknownDeviceRef(InventoryError, LookupError):
    code = "unknown_device"


class UnknownBundleRef(InventoryError, LookupError):
    code = "unknown_bundle"


class AmbiguousBundleRef(InventoryError):
    code = "ambiguous_bundle"


@dataclass(frozen=True)
class DeviceView:
    """A device as selectors see it."""

    id: str
    online: bool
    profile: str
    agent_version: str
    runtimes: tuple[str, ...]
    active_digest: str | None
    tags: tuple[str, ...]
    decommissioned: bool


def check_tag(tag: str) -> str:
    if not _TAG.match(tag):
        raise InventoryError(f"bad tag {tag!r}: letters, digits and _.:=- up to 64")
    return tag


def check_group_name(name: str) -> str:
    if not _GROUP.match(name):
        raise InventoryError(f"bad group name {name!r}: lower-case letters, digits, _.-")
    return name


def resolve_bundle(session: Session, ref: str) -> str:
    """The digest `ref` names (`name@version`, a digest or a unique digest prefix).

    Raises UnknownBundleRef, AmbiguousBundleRef, InventoryError (malformed).
    """
    ref = ref.strip()
    named = _REF.match(ref)
    if named:
        rows = list(
            session.scalars(
                select(Bundle.digest).where(
                    Bundle.name == named["name"], Bundle.version == int(named["version"])
                )
            )
        )
    elif _PREFIX.match(ref.lower()):
        rows = list(
            session.scalars(select(Bundle.digest).where(Bundle.digest.startswith(ref.lower())))
        )
    else:
        raise InventoryError(f"not a bundle reference: {ref!r} (name@version or digest prefix)")
    if not rows:
        raise UnknownBundleRef(f"no bundle {ref!r}")
    if len(rows) > 1:
        raise AmbiguousBundleRef(f"{ref!r} names {len(rows)} bundles; give more of the digest")
    return rows[0]


def device_views(session: Session) -> list[DeviceView]:
    """Every known device with its inventory, ordered by id."""
    inventory = {row.device: row for row in session.scalars(select(DeviceInventory))}
    views = []
    for dev in session.scalars(select(Device).order_by(Device.id)):
        inv = inventory.get(dev.id)
        runtimes = tuple(
            str(r.get("key")) for r in dev.runtimes if isinstance(r, dict) and r.get("available")
        )
        views.append(
            DeviceView(
                id=dev.id,
                online=bool(dev.online),
                profile=dev.profile,
                agent_version=dev.agent_version,
                runtimes=runtimes,
                active_digest=dev.active_digest,
                # the union: a selector on a tag matches whoever set it, device or operator
                tags=tuple(sorted({*(inv.tags if inv else ()), *dev.declared_tags})),
                decommissioned=bool(inv and inv.decommissioned is not None),
            )
        )
    return views


def select_devices(session: Session, selector: Selector) -> list[str]:
    """Ids of the devices `selector` matches now, ordered by id.

    Raises UnknownGroup, and the bundle reference errors of `resolve_bundle`.
    """
    selectors = [selector]
    if selector.group:
        group = session.get(DeviceGroup, selector.group)
        if group is None:
            raise UnknownGroup(f"no group {selector.group!r}")
        selectors.append(Selector.model_validate(group.selector))
    digests = [resolve_bundle(session, s.bundle) if s.bundle else None for s in selectors]
    return [
        view.id
        for view in device_views(session)
        if not view.decommissioned
        and all(_matches(view, s, d) for s, d in zip(selectors, digests, strict=True))
    ]


def _matches(view: DeviceView, sel: Selector, digest: str | None) -> bool:
    return (
        (not sel.devices or view.id in sel.devices)
        and (sel.profile is None or view.profile == sel.profile)
        and (sel.runtime is None or sel.runtime in view.runtimes)
        and all(tag in view.tags for tag in sel.tags)
        and (sel.agent_version is None or view.agent_version == sel.agent_version)
        and (digest is None or view.active_digest == digest)
        and (sel.online is None or view.online == sel.online)
    )


def _inventory(session: Session, device_id: str) -> DeviceInventory:
    if session.get(Device, device_id) is None:
        raise UnknownDeviceRef(f"no device {device_id!r}")
    row = session.get(DeviceInventory, device_id)
    if row is None:
        row = DeviceInventory(device=device_id, tags=[], decommissioned=None)
        session.add(row)
    return row


def set_tags(session: Session, device_id: str, add: list[str], remove: list[str]) -> list[str]:
    """Add and remove a device's tags; returns them. Raises UnknownDeviceRef, InventoryError."""
    for tag in (*add, *remove):
        check_tag(tag)
    row = _inventory(session, device_id)
    tags = [t for t in row.tags if t not in remove]
    tags += [t for t in add if t not in tags]
    row.tags = sorted(tags)
    return row.tags


def set_decommissioned(session: Session, device_id: str, decommissioned: bool) -> None:
    """Take a device out of every selector (or bring it back). Raises UnknownDeviceRef."""
    row = _inventory(session, device_id)
    row.decommissioned = time.time() if decommissioned else None


def save_group(session: Session, name: str, selector: Selector, now: float) -> DeviceGroup:
    """Create or replace a group. Raises InventoryError (bad name, a group naming a group)."""
    check_group_name(name)
    if selector.group:
        raise InventoryError("a group's selector cannot name another group")
    if selector.bundle:
        resolve_bundle(session, selector.bundle)
    row = session.get(DeviceGroup, name)
    data = selector.model_dump(exclude_defaults=True)
    if row is None:
        row = DeviceGroup(name=name, selector=data, created=now)
        session.add(row)
    else:
        row.selector = data
    return row


def delete_group(session: Session, name: str) -> None:
    """Raises UnknownGroup."""
    row = session.get(DeviceGroup, name)
    if row is None:
        raise UnknownGroup(f"no group {name!r}")
    session.delete(row)
