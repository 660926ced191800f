"""Inventory: tags, groups as saved selectors, decommissioning, and bundle references.

A selector is matched against what devices report (profile, runtimes, agent version, active
bundle, online) and what operators say about them (tags, decommissioned). Decommissioned devices
match no selector. Bundles are named `name@version` or by a unique prefix of their digest.
"""

from __future__ import annotations

import re
import time
from typing import Any

from sqlalchemy import func, select
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


def available_runtimes(reported: Any) -> set[str]:
    """The runtime keys a device's state lists as available."""
    if not isinstance(reported, list):
        return set()
    return {str(r.get("key")) for r in reported if isinstance(r, dict) and r.get("available")}


def select_devices(session: Session, selector: Selector) -> list[str]:
    """Ids of the devices `selector` matches now, ordered by id.

    The rollout engine asks this on every tick of every running rollout, so the database does
    the filtering it can (decommissioned, profile, agent version, bundle, online) and only the
    JSON a selector needs (runtimes, tags) is read, of the devices left.

    Raises UnknownGroup, and the bundle reference errors of `resolve_bundle`.
    """
    selectors = [selector]
    if selector.group:
        group = session.get(DeviceGroup, selector.group)
        if group is None:
            raise UnknownGroup(f"no group {selector.group!r}")
        selectors.append(Selector.model_validate(group.selector))
    digests = [resolve_bundle(session, s.bundle) if s.bundle else None for s in selectors]
    query = (
        select(Device.id, Device.runtimes, Device.declared_tags, DeviceInventory.tags)
        .outerjoin(DeviceInventory, DeviceInventory.device == Device.id)
        .where(DeviceInventory.decommissioned.is_(None))
        .order_by(Device.id)
    )
    needs_runtimes = any(s.runtime is not None for s in selectors)
    needs_tags = any(s.tags for s in selectors)
    if not (needs_runtimes or needs_tags):
        query = query.with_only_columns(Device.id)
    for sel, digest in zip(selectors, digests, strict=True):
        if sel.profile is not None:
            query = query.where(Device.profile == sel.profile)
        if sel.agent_version is not None:
            query = query.where(Device.agent_version == sel.agent_version)
        if digest is not None:
            query = query.where(Device.active_digest == digest)
        if sel.online is not None:
            query = query.where(func.coalesce(Device.online, False) == sel.online)
    listed = [set(s.devices) for s in selectors if s.devices]
    matched = []
    for row in session.execute(query):
        if not all(row.id in ids for ids in listed):
            continue
        if needs_runtimes:
            runtimes = available_runtimes(row.runtimes)
            if not all(s.runtime in runtimes for s in selectors if s.runtime is not None):
                continue
        if needs_tags:
            # the union: a selector on a tag matches whoever set it, device or operator
            tags = {*(row.tags or ()), *(row.declared_tags or ())}
            if not all(tag in tags for s in selectors for tag in s.tags):
                continue
        matched.append(row.id)
    return matched


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
