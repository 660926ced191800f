"""Read models of the dashboard's pages: the fleet's counts and alerts, a page of devices
(filtered, sorted and paged in SQL), one device with its history.

Every function takes an open session and returns plain dataclasses; nothing here writes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import String, cast, column, func, select, text
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from controller.db import (
    DEVICE_HEALTH_MAY_ALERT_PG,
    Deployment,
    DetectionRow,
    Device,
    DeviceHealth,
    EventRow,
    HealthRow,
)
from controller.rollouts import inventory
from controller.rollouts.models import DeviceGroup, DeviceInventory, DeviceTarget, RolloutDevice
from controller.rollouts.spec import Selector

# alert thresholds on the newest health sample of each device
HOT_C = 80.0
CLOCK_SKEW_S = 30.0
OFFLINE_SHOWN = 50
ALERTS_SHOWN = 200
PER_PAGE = 50
LIVE_WINDOW_S = 3600.0
MAX_PER_PAGE = 200

SORTS: dict[str, Any] = {
    "id": Device.id,
    "status": Device.status,
    "profile": Device.profile,
    "runtime": Device.active_runtime,
    "bundle": Device.active_name,
    "agent": Device.agent_version,
    "last_seen": Device.last_seen,
}


@dataclass(frozen=True)
class Alert:
    device: str
    kind: str  # hot, throttled, under_voltage, outbox_dropping, clock_skew
    detail: str


@dataclass(frozen=True)
class OfflineDevice:
    id: str
    last_seen: float
    profile: str


@dataclass(frozen=True)
class FleetView:
    total: int
    by_status: list[tuple[str, int]]
    by_profile: list[tuple[str, int]]
    by_runtime: list[tuple[str, int]]
    by_bundle: list[tuple[str, int]]
    offline: list[OfflineDevice]
    offline_total: int
    alerts: list[Alert]
    alerts_total: int


def _counts(db: Session, column: Any) -> list[tuple[str, int]]:
    rows = db.execute(select(column, func.count()).group_by(column).order_by(func.count().desc()))
    return [(str(value) if value not in (None, "") else "-", int(n)) for value, n in rows]


def health_alerts(device: str, payload: dict[str, Any], ts: float, received: float) -> list[Alert]:
    """What is wrong in one device's newest health sample."""
    alerts = []
    temps = payload.get("temperatures_c") or {}
    hot = {name: t for name, t in temps.items() if isinstance(t, int | float) and t >= HOT_C}
    if hot:
        name, worst = max(hot.items(), key=lambda item: item[1])
        alerts.append(Alert(device, "hot", f"{name} {worst:.0f} °C"))
    flags = payload.get("throttling") or {}
    now_flags = sorted(k for k, v in flags.items() if v is True and str(k).endswith("_now"))
    if "under_voltage_now" in now_flags:
        alerts.append(Alert(device, "under_voltage", "under-voltage now"))
    throttled = [k for k in now_flags if k != "under_voltage_now"]
    if throttled:
        alerts.append(Alert(device, "throttled", ", ".join(throttled)))
    dropped = payload.get("outbox_dropped") or 0
    if isinstance(dropped, int) and dropped > 0:
        alerts.append(Alert(device, "outbox_dropping", f"{dropped} messages dropped"))
    skew = received - ts
    if abs(skew) > CLOCK_SKEW_S:
        alerts.append(Alert(device, "clock_skew", f"{skew:+.0f} s between its clock and ours"))
    return alerts


# SQLite: the online devices whose newest health may give an alert, a superset of those
# health_alerts finds one for (its thresholds a little lower, as in
# controller.db.DEVICE_HEALTH_MAY_ALERT_PG), the three fields read by one extraction. Most devices
# have none, so the fields alerts read are extracted and decoded for these only.
_CANDIDATES_SQLITE = """
WITH h AS (
    SELECT device_health.device AS device, device_health.ts AS ts,
           device_health.received AS received,
           json_extract(device_health.payload,
                        '$.temperatures_c', '$.throttling', '$.outbox_dropped') AS part
    FROM device_health JOIN devices ON devices.id = device_health.device
    WHERE devices.online = 1
)
SELECT h.device FROM h
WHERE abs(h.received - h.ts) > :skew
   OR CAST(json_extract(h.part, '$[2]') AS INTEGER) > 0
   OR EXISTS (SELECT 1 FROM json_each(h.part, '$[0]') AS t
              WHERE t.type IN ('integer', 'real') AND t.value >= :hot)
   OR EXISTS (SELECT 1 FROM json_each(h.part, '$[1]') AS f
              WHERE f.type = 'true' AND f.key LIKE '%\\_now' ESCAPE '\\')
"""


def _alert_candidates(db: Session) -> Any:
    """The ids of the devices that may have a health alert, as a subquery: on PostgreSQL read
    from the partial index whose predicate says so (controller.db), on SQLite with one parse of
    each online device's payload."""
    if db.get_bind().dialect.name == "postgresql":
        return select(DeviceHealth.device).where(text(DEVICE_HEALTH_MAY_ALERT_PG)).correlate(None)
    return (
        text(_CANDIDATES_SQLITE)
        .bindparams(skew=CLOCK_SKEW_S - 1.0, hot=HOT_C - 1.0)
        .columns(column("device", String))
    )


def fleet(db: Session) -> FleetView:
    """Counts by status, profile, runtime and bundle; offline devices; health alerts."""
    total = db.scalar(select(func.count()).select_from(Device)) or 0
    bundles = db.execute(
        select(Device.active_name, Device.active_version, func.count())
        .group_by(Device.active_name, Device.active_version)
        .order_by(func.count().desc())
    )
    by_bundle = [(f"{name}@{version}" if name else "-", int(n)) for name, version, n in bundles]
    offline_total = (
        db.scalar(select(func.count()).select_from(Device).where(Device.online.is_(False))) or 0
    )
    offline = [
        OfflineDevice(r.id, r.last_seen, r.profile)
        for r in db.execute(
            select(Device.id, Device.last_seen, Device.profile)
            .where(Device.online.is_(False))
            .order_by(Device.last_seen.desc())
            .limit(OFFLINE_SHOWN)
        )
    ]
    alerts: list[Alert] = []
    # only the fields alerts read: a whole health payload is many times their size; and only
    # of the devices the database finds may have an alert (most have none)
    payload = DeviceHealth.payload
    rows = db.execute(
        select(
            DeviceHealth.device,
            payload["temperatures_c"],
            payload["throttling"],
            payload["outbox_dropped"].as_integer(),
            DeviceHealth.ts,
            DeviceHealth.received,
        )
        .join(Device, Device.id == DeviceHealth.device)
        .where(Device.online.is_(True), DeviceHealth.device.in_(_alert_candidates(db)))
        .order_by(DeviceHealth.device)
    )
    for device, temps, throttling, dropped, ts, received in rows:
        part = {"temperatures_c": temps, "throttling": throttling, "outbox_dropped": dropped}
        alerts.extend(health_alerts(device, part, ts, received))
    return FleetView(
        total=total,
        by_status=_counts(db, Device.status),
        by_profile=_counts(db, Device.profile),
        by_runtime=_counts(db, Device.active_runtime),
        by_bundle=by_bundle,
        offline=offline,
        offline_total=offline_total,
        alerts=alerts[:ALERTS_SHOWN],
        alerts_total=len(alerts),
    )


# ---- devices --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceFilter:
    q: str = ""
    status: str = ""
    profile: str = ""
    runtime: str = ""
    tag: str = ""
    group: str = ""
    sort: str = "id"
    desc: bool = False
    page: int = 1
    per_page: int = PER_PAGE

    def query(self, **changes: Any) -> dict[str, str]:
        """The non-empty parameters, with `changes`, for links."""
        values = {k: getattr(self, k) for k in self.__dataclass_fields__} | changes
        out = {}
        for key, value in values.items():
            if value in ("", None, False) or (key == "sort" and value == "id"):
                continue
            if (key == "page" and value == 1) or (key == "per_page" and value == PER_PAGE):
                continue
            out[key] = "1" if value is True else str(value)
        return out


@dataclass(frozen=True)
class DeviceListRow:
    id: str
    online: bool
    status: str
    profile: str
    agent_version: str
    runtime: str
    bundle: str
    last_seen: float
    tags: list[str]


@dataclass(frozen=True)
class DevicePage:
    rows: list[DeviceListRow]
    total: int
    page: int
    pages: int
    error: str = ""


@dataclass(frozen=True)
class FilterChoices:
    statuses: list[str]
    profiles: list[str]
    runtimes: list[str]
    groups: list[str]


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _conditions(db: Session, f: DeviceFilter) -> list[ColumnElement[bool]]:
    """Raises inventory.InventoryError for an unknown group."""
    conds: list[ColumnElement[bool]] = []
    if f.q:
        conds.append(func.lower(Device.id).contains(f.q.lower(), autoescape=True))
    if f.status:
        conds.append(Device.status == f.status)
    if f.profile:
        conds.append(Device.profile == f.profile)
    if f.runtime:
        conds.append(Device.active_runtime == f.runtime)
    if f.tag:
        # tags are stored as a JSON list of plain strings ("a", "b"): match the quoted tag
        pattern = f'%"{_like_escape(f.tag)}"%'
        conds.append(cast(DeviceInventory.tags, String).like(pattern, escape="\\"))
    if f.group:
        conds.append(Device.id.in_(inventory.select_devices(db, Selector(group=f.group))))
    return conds


def device_page(db: Session, f: DeviceFilter) -> DevicePage:
    """One page of devices matching `f`, counted, filtered, sorted and paged in SQL."""
    try:
        conds = _conditions(db, f)
    except inventory.InventoryError as exc:
        return DevicePage([], 0, 1, 1, error=str(exc))
    joined = select(Device.id).outerjoin(DeviceInventory, DeviceInventory.device == Device.id)
    total = db.scalar(select(func.count()).select_from(joined.where(*conds).subquery())) or 0
    pages = max(1, math.ceil(total / f.per_page))
    page = min(max(1, f.page), pages)
    column = SORTS.get(f.sort, Device.id)
    order = [column.desc() if f.desc else column.asc(), Device.id.asc()]
    query = (
        select(Device, DeviceInventory.tags)
        .outerjoin(DeviceInventory, DeviceInventory.device == Device.id)
        .where(*conds)
        .order_by(*order)
        .limit(f.per_page)
        .offset((page - 1) * f.per_page)
    )
    rows = [
        DeviceListRow(
            id=dev.id,
            online=bool(dev.online),
            status=dev.status,
            profile=dev.profile,
            agent_version=dev.agent_version,
            runtime=dev.active_runtime or "",
            bundle=f"{dev.active_name}@{dev.active_version}" if dev.active_name else "",
            last_seen=dev.last_seen,
            tags=[str(t) for t in tags or []],
        )
        for dev, tags in db.execute(query)
    ]
    return DevicePage(rows, total, page, pages)


def filter_choices(db: Session) -> FilterChoices:
    def distinct(column: Any) -> list[str]:
        return [str(v) for v in db.scalars(select(column).distinct().order_by(column)) if v]

    return FilterChoices(
        statuses=distinct(Device.status),
        profiles=distinct(Device.profile),
        runtimes=distinct(Device.active_runtime),
        groups=list(db.scalars(select(DeviceGroup.name).order_by(DeviceGroup.name))),
    )


# ---- one device -----------------------------------------------------------------------------


@dataclass(frozen=True)
class HealthPoint:
    ts: float
    fps: float
    inference_ms: float
    temperature_c: float | None
    cpu_percent: float | None
    mem_percent: float | None
    throttled: bool


@dataclass
class DeviceDetail:
    device: Device
    tags: list[str]
    decommissioned: bool
    target: DeviceTarget | None
    health: DeviceHealth | None
    alerts: list[Alert]
    deployments: list[Deployment]
    events: list[EventRow]
    detections: list[DetectionRow]
    snapshots: list[DetectionRow]
    history: list[HealthPoint]
    rollouts: list[RolloutDevice] = field(default_factory=list)

    @property
    def probation(self) -> bool:
        latest = self.deployments[0] if self.deployments else None
        return latest is not None and latest.status == "probation"

    @property
    def previous_bundle(self) -> str | None:
        """The bundle the device ran before the active one: its fallback slot."""
        active = self.device.active_digest
        for dep in self.deployments:
            if dep.bundle != active and dep.status == "running":
                return dep.bundle
        for member in self.rollouts:
            if member.previous and member.previous != active:
                return member.previous
        return None


def _point(ts: float, payload: dict[str, Any]) -> HealthPoint:
    cameras = payload.get("cameras") or []
    fps = sum(float(c.get("fps_processed") or 0.0) for c in cameras)
    infer = max((float(c.get("inference_ms") or 0.0) for c in cameras), default=0.0)
    temps = [
        t for t in (payload.get("temperatures_c") or {}).values() if isinstance(t, int | float)
    ]
    used, total = payload.get("mem_used_mb"), payload.get("mem_total_mb")
    mem = 100.0 * used / total if used is not None and total else None
    flags = payload.get("throttling") or {}
    return HealthPoint(
        ts=ts,
        fps=fps,
        inference_ms=infer,
        temperature_c=max(temps) if temps else None,
        cpu_percent=payload.get("cpu_percent"),
        mem_percent=mem,
        throttled=any(v is True and str(k).endswith("_now") for k, v in flags.items()),
    )


def health_history(
    db: Session, device_id: str, since: float, limit: int = 720
) -> list[HealthPoint]:
    """The device's stored health samples since `since`, oldest first, plus the newest one."""
    rows = db.execute(
        select(HealthRow.ts, HealthRow.payload)
        .where(HealthRow.device == device_id, HealthRow.ts >= since)
        .order_by(HealthRow.ts.desc())
        .limit(limit)
    ).all()
    points = [_point(ts, payload or {}) for ts, payload in reversed(rows)]
    latest = db.get(DeviceHealth, device_id)
    if latest is not None and (not points or latest.ts > points[-1].ts):
        points.append(_point(latest.ts, latest.payload or {}))
    return points


def recent_detections(db: Session, device_id: str, limit: int = 20) -> list[DetectionRow]:
    """The device's newest detections by their own time (the (device, ts) index)."""
    query = (
        select(DetectionRow)
        .where(DetectionRow.device == device_id)
        .order_by(DetectionRow.ts.desc(), DetectionRow.id)
        .limit(limit)
    )
    return list(db.scalars(query))


def detections_after(
    db: Session, device_id: str, received: float, seen: set[str], limit: int = 50
) -> list[DetectionRow]:
    """Detections of the device received at or after `received` and not in `seen`, oldest
    first (rows received in the same instant are told apart by their ids).

    Only detections made within LIVE_WINDOW_S of `received` by the device's clock are looked
    at, so the (device, ts) index bounds the scan however many the device has; an older one
    delivered late (an outbox emptied after an outage) is history, not live.
    """
    query = (
        select(DetectionRow)
        .where(
            DetectionRow.device == device_id,
            DetectionRow.ts >= received - LIVE_WINDOW_S,
            DetectionRow.received >= received,
        )
        .order_by(DetectionRow.received, DetectionRow.id)
        .limit(limit + len(seen))
    )
    return [row for row in db.scalars(query) if row.id not in seen][:limit]


def device_detail(db: Session, device_id: str, now: float) -> DeviceDetail | None:
    dev = db.get(Device, device_id)
    if dev is None:
        return None
    inv = db.get(DeviceInventory, device_id)
    health = db.get(DeviceHealth, device_id)
    deployments = list(
        db.scalars(
            select(Deployment)
            .where(Deployment.device == device_id)
            .order_by(Deployment.created.desc())
            .limit(20)
        )
    )
    events = list(
        db.scalars(
            select(EventRow)
            .where(EventRow.device == device_id)
            .order_by(EventRow.ts.desc())
            .limit(50)
        )
    )
    snapshots = list(
        db.scalars(
            select(DetectionRow)
            .where(DetectionRow.device == device_id, DetectionRow.snapshot.is_not(None))
            .order_by(DetectionRow.ts.desc())
            .limit(12)
        )
    )
    rollouts = list(
        db.scalars(select(RolloutDevice).where(RolloutDevice.device == device_id).limit(20))
    )
    return DeviceDetail(
        device=dev,
        tags=[str(t) for t in (inv.tags if inv else [])],
        decommissioned=bool(inv and inv.decommissioned is not None),
        target=db.get(DeviceTarget, device_id),
        health=health,
        alerts=health_alerts(device_id, health.payload or {}, health.ts, health.received)
        if health is not None
        else [],
        deployments=deployments,
        events=events,
        detections=recent_detections(db, device_id),
        snapshots=snapshots,
        history=health_history(db, device_id, now - 24 * 3600),
        rollouts=rollouts,
    )


def device_state_key(db: Session, device_id: str) -> tuple[Any, ...] | None:
    """What changes when the device's state does (polled by the live stream)."""
    row = db.execute(
        select(
            Device.status,
            Device.online,
            Device.active_digest,
            Device.active_runtime,
            Device.agent_version,
        ).where(Device.id == device_id)
    ).first()
    if row is None:
        return None
    latest = db.scalar(
        select(EventRow.id)
        .where(EventRow.device == device_id)
        .order_by(EventRow.ts.desc(), EventRow.id.desc())
        .limit(1)
    )
    return (*tuple(row), latest)
