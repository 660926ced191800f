"""The audit log: one row per mutating request (who, what, target, when, from where, result),
written after the request is answered, and read back with filters and pages."""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from controller.auth.models import AuditEntry

MAX_PAGE = 500


@dataclass(frozen=True)
class AuditRecord:
    actor: str
    method: str
    action: str
    target: str
    status: int
    client: str
    detail: str = ""
    ts: float | None = None


def record(db: Session, entry: AuditRecord) -> AuditEntry:
    """Add one audit row (not committed); long fields are cut to their column sizes."""
    row = AuditEntry(
        ts=time.time() if entry.ts is None else entry.ts,
        actor=entry.actor[:96],
        method=entry.method[:8],
        action=entry.action[:256],
        target=entry.target[:512],
        status=entry.status,
        client=entry.client[:64],
        detail=entry.detail[:4096],
    )
    db.add(row)
    return row


@dataclass(frozen=True)
class AuditQuery:
    actor: str | None = None
    action: str | None = None
    method: str | None = None
    target: str | None = None
    status: int | None = None
    since: float | None = None
    until: float | None = None
    # rows with an id below this one: the page after a previous page's last id
    before_id: int | None = None
    limit: int = 100


def query(db: Session, q: AuditQuery) -> list[AuditEntry]:
    """Audit rows matching `q`, newest first, at most `q.limit` (≤ MAX_PAGE)."""
    stmt = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(min(q.limit, MAX_PAGE))
    if q.actor is not None:
        stmt = stmt.where(AuditEntry.actor == q.actor)
    if q.action is not None:
        stmt = stmt.where(AuditEntry.action == q.action)
    if q.method is not None:
        stmt = stmt.where(AuditEntry.method == q.method.upper())
    if q.target is not None:
        stmt = stmt.where(AuditEntry.target == q.target)
    if q.status is not None:
        stmt = stmt.where(AuditEntry.status == q.status)
    if q.since is not None:
        stmt = stmt.where(AuditEntry.ts >= q.since)
    if q.until is not None:
        stmt = stmt.where(AuditEntry.ts < q.until)
    if q.before_id is not None:
        stmt = stmt.where(AuditEntry.id < q.before_id)
    return list(db.scalars(stmt))
