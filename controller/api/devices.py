"""Routes about the fleet's devices and what they report: devices, detections, health samples,
events and the fleet summary."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from sqlalchemy import func, select

from controller.api.models import DetectionOut, DeviceOut, EventOut, HealthOut, SummaryOut
from controller.api.params import Db, Limit
from controller.db import DetectionRow, Device, DeviceHealth, EventRow, HealthRow


def devices_router() -> APIRouter:
    """The device-facing read routes; they read the database of the app they are included in."""
    router = APIRouter()

    @router.get("/api/devices")
    def list_devices(db: Db) -> list[DeviceOut]:
        rows = db.scalars(select(Device).order_by(Device.id))
        return [DeviceOut.model_validate(r) for r in rows]

    @router.get("/api/devices/{device_id}")
    def get_device(device_id: str, db: Db) -> DeviceOut:
        row = db.get(Device, device_id)
        if row is None:
            raise HTTPException(404, f"no device {device_id!r}")
        return DeviceOut.model_validate(row)

    @router.get("/api/detections")
    def list_detections(
        db: Db, limit: Limit = 50, device: str | None = None, label: str | None = None
    ) -> list[DetectionOut]:
        query = select(DetectionRow).order_by(DetectionRow.ts.desc()).limit(limit)
        if device:
            query = query.where(DetectionRow.device == device)
        if label:
            query = query.where(DetectionRow.label == label)
        return [DetectionOut.model_validate(r) for r in db.scalars(query)]

    @router.get("/api/health/{device_id}")
    def list_health(device_id: str, db: Db, limit: Limit = 20) -> list[HealthOut]:
        """Newest first: the device's latest sample (kept whole for every message), then the
        downsampled history (one sample per device per interval)."""
        query = (
            select(HealthRow)
            .where(HealthRow.device == device_id)
            .order_by(HealthRow.ts.desc())
            .limit(limit)
        )
        history = [HealthOut.model_validate(r) for r in db.scalars(query)]
        latest = db.get(DeviceHealth, device_id)
        if latest is not None and (not history or latest.ts > history[0].ts):
            newest = HealthOut(
                id=None,
                device=latest.device,
                ts=latest.ts,
                payload=latest.payload,
                received=latest.received,
            )
            history = [newest, *history][:limit]
        return history

    @router.get("/api/events")
    def list_events(
        db: Db,
        limit: Limit = 50,
        device: str | None = None,
        kind: str | None = None,
        since: float | None = None,
    ) -> list[EventOut]:
        """Newest first; with `since` (a `received` time), the events the controller received
        at or after it, oldest first, so a client can follow them with a cursor."""
        if since is None:
            query = select(EventRow).order_by(EventRow.ts.desc()).limit(limit)
        else:
            query = (
                select(EventRow)
                .where(EventRow.received >= since)
                .order_by(EventRow.received, EventRow.id)
                .limit(limit)
            )
        if device:
            query = query.where(EventRow.device == device)
        if kind:
            query = query.where(EventRow.kind == kind)
        return [EventOut.model_validate(r) for r in db.scalars(query)]

    @router.get("/api/summary")
    def summary(db: Db, device: str | None = None) -> SummaryOut:
        """The fleet's counts; detections, frames and fps of one `device` when given."""
        total = db.scalar(select(func.count()).select_from(Device)) or 0
        online = db.scalar(select(func.count()).select_from(Device).where(Device.online)) or 0
        detections_q = select(func.count()).select_from(DetectionRow)
        health_q = select(DeviceHealth.payload)
        last_q = select(DetectionRow).order_by(DetectionRow.ts.desc()).limit(1)
        if device is not None:
            detections_q = detections_q.where(DetectionRow.device == device)
            health_q = health_q.where(DeviceHealth.device == device)
            last_q = last_q.where(DetectionRow.device == device)
        detections = db.scalar(detections_q) or 0
        frames, fps = 0, 0.0
        # the newest health of every device is one row each (device_health): this page is
        # polled, and a fleet has thousands of devices
        for payload in db.scalars(health_q):
            for camera in payload.get("cameras", []):
                frames += int(camera.get("frames_processed", 0))
                fps += float(camera.get("fps_processed", 0.0))
        last = db.scalar(last_q)
        return SummaryOut(
            devices=total,
            devices_online=online,
            detections=detections,
            frames=frames,
            fps=fps,
            last_detection=DetectionOut.model_validate(last) if last else None,
        )

    return router
