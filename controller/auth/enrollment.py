"""Device enrollment: one-time tokens, pre-approval, pending requests, approval, revocation,
renewal. A device proves it holds its key by the CSR's own signature; the private key never
leaves the device. Issued certificates and their revocations are kept in the database.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import Float, Index, String, Text, func, select
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from controller.auth.ca import (
    CertificateAuthority,
    CertificateError,
    load_csr,
    public_key_fingerprint,
)
from controller.db import Base
from protocol.errors import InvalidDeviceId
from protocol.topics import validate_device_id

log = logging.getLogger(__name__)


class IdentityStatus(str, enum.Enum):
    PENDING = "pending"  # asked without a token; waits for an operator
    APPROVED = "approved"  # pre-approved or approved; gets a certificate on its next request
    ENROLLED = "enrolled"  # holds a certificate
    REJECTED = "rejected"
    REVOKED = "revoked"


class EnrollmentError(Exception):
    """A refused enrollment step; `reason` is a stable code, `status` the HTTP status for it."""

    def __init__(self, reason: str, message: str, status: int = 403) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.status = status


class EnrollmentToken(Base):
    __tablename__ = "enrollment_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    device: Mapped[str | None] = mapped_column(String(64))
    created: Mapped[float] = mapped_column(Float)
    expires: Mapped[float] = mapped_column(Float)
    used_at: Mapped[float | None] = mapped_column(Float)
    used_by: Mapped[str | None] = mapped_column(String(64))


class IdentityRecord(Base):
    __tablename__ = "device_identities"

    device: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    # sha256 of the device's public key: pinned by a pending request or a pre-approval
    fingerprint: Mapped[str | None] = mapped_column(String(64))
    csr: Mapped[str | None] = mapped_column(Text)
    created: Mapped[float] = mapped_column(Float)
    updated: Mapped[float] = mapped_column(Float)

    __table_args__ = (Index("ix_device_identities_status", "status"),)


class DeviceCertificate(Base):
    __tablename__ = "device_certificates"

    serial: Mapped[str] = mapped_column(String(64), primary_key=True)  # decimal
    device: Mapped[str] = mapped_column(String(64))
    fingerprint: Mapped[str] = mapped_column(String(64))
    not_before: Mapped[float] = mapped_column(Float)
    not_after: Mapped[float] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float)

    __table_args__ = (
        Index("ix_device_certificates_device", "device"),
        Index("ix_device_certificates_revoked_at", "revoked_at"),
    )


@dataclass(frozen=True)
class EnrollResult:
    """`certificate` is None while the request waits for approval."""

    status: IdentityStatus
    certificate: bytes | None
    ca: bytes


@dataclass(frozen=True)
class CreatedToken:
    token: str  # shown once; only its hash is stored
    device: str | None
    expires: float


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _device(device_id: str) -> str:
    try:
        return validate_device_id(device_id)
    except InvalidDeviceId as exc:
        raise EnrollmentError("bad_device_id", str(exc), 400) from exc


RevocationHook = Callable[[str, list[tuple[int, datetime]]], None]


class EnrollmentService:
    """Issues device certificates from `ca` under the rules above."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        ca: CertificateAuthority,
        *,
        cert_valid: timedelta = timedelta(days=90),
        max_pending: int = 1000,
        on_revoked: RevocationHook | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    ) -> None:
        self.sessions = sessions
        self.ca = ca
        self.cert_valid = cert_valid
        self.max_pending = max_pending
        self.on_revoked = on_revoked
        self.clock = clock

    # ---- operator side ---------------------------------------------------------------------

    def create_token(self, device: str | None, ttl: timedelta) -> CreatedToken:
        """A one-time token, optionally bound to one device id."""
        if device is not None:
            _device(device)
        now = self.clock().timestamp()
        token = secrets.token_urlsafe(32)
        expires = now + ttl.total_seconds()
        with self.sessions.begin() as db:
            db.add(
                EnrollmentToken(
                    token_hash=_hash(token), device=device, created=now, expires=expires
                )
            )
        log.info("event=enrollment_token_created device=%s expires=%.0f", device or "-", expires)
        return CreatedToken(token, device, expires)

    def preapprove(self, device: str, fingerprint: str | None = None) -> None:
        """Let `device` (with this public key, when given) enroll without a token."""
        _device(device)
        self._decide(device, IdentityStatus.APPROVED, fingerprint=fingerprint, create=True)

    def approve(self, device: str) -> None:
        """Approve a pending (or re-admit a revoked or rejected) device; its key stays pinned."""
        self._decide(device, IdentityStatus.APPROVED)

    def reject(self, device: str) -> None:
        self._decide(device, IdentityStatus.REJECTED)

    def _decide(
        self,
        device: str,
        status: IdentityStatus,
        *,
        fingerprint: str | None = None,
        create: bool = False,
    ) -> None:
        now = self.clock().timestamp()
        with self.sessions.begin() as db:
            row = db.get(IdentityRecord, device)
            if row is None:
                if not create:
                    raise EnrollmentError("unknown_device", f"no enrollment for {device!r}", 404)
                row = IdentityRecord(device=device, created=now, csr=None)
                db.add(row)
            if create:
                row.fingerprint = fingerprint
            row.status = status.value
            row.updated = now
        log.info("event=enrollment_decided device=%s status=%s", device, status.value)

    def revoke(self, device: str) -> int:
        """Revoke every certificate of `device` and cut it off; returns how many were revoked."""
        now = self.clock()
        with self.sessions.begin() as db:
            row = db.get(IdentityRecord, device)
            if row is None:
                raise EnrollmentError("unknown_device", f"no enrollment for {device!r}", 404)
            row.status = IdentityStatus.REVOKED.value
            row.updated = now.timestamp()
            certs = db.scalars(
                select(DeviceCertificate).where(
                    DeviceCertificate.device == device, DeviceCertificate.revoked_at.is_(None)
                )
            ).all()
            for cert in certs:
                cert.revoked_at = now.timestamp()
        log.warning("event=device_revoked device=%s certificates=%d", device, len(certs))
        if self.on_revoked is not None:
            self.on_revoked(device, self.revoked_serials())
        return len(certs)

    def revoked_serials(self) -> list[tuple[int, datetime]]:
        """Every revoked certificate that has not expired yet (older ones need no CRL entry)."""
        now = self.clock().timestamp()
        with self.sessions() as db:
            rows = db.execute(
                select(DeviceCertificate.serial, DeviceCertificate.revoked_at).where(
                    DeviceCertificate.revoked_at.is_not(None), DeviceCertificate.not_after > now
                )
            ).all()
        return [(int(serial), datetime.fromtimestamp(at or 0, timezone.utc)) for serial, at in rows]

    def identities(self, status: IdentityStatus | None = None) -> list[IdentityRecord]:
        with self.sessions() as db:
            query = select(IdentityRecord).order_by(IdentityRecord.created)
            if status is not None:
                query = query.where(IdentityRecord.status == status.value)
            return list(db.scalars(query))

    # ---- device side -----------------------------------------------------------------------

    def enroll(self, device: str, csr_pem: bytes, token: str | None = None) -> EnrollResult:
        """A certificate now (valid token, or approved), else a pending request.

        Raises EnrollmentError (bad_csr and other CSR reasons, bad_token, token_used,
        token_expired, token_device, revoked, rejected, key_mismatch, too_many_pending).
        """
        device = _device(device)
        fingerprint = self._fingerprint(csr_pem, device)
        now = self.clock()
        with self.sessions.begin() as db:
            row = db.get(IdentityRecord, device)
            if row is not None and row.status in (IdentityStatus.REVOKED, IdentityStatus.REJECTED):
                raise EnrollmentError(
                    row.status, f"{device!r} was {row.status}; an operator must approve it"
                )
            # a device enrolled before with this key needs no token: the one its settings
            # still carry was spent then, and must not lock it out of a new certificate
            known_key = (
                row is not None
                and row.status in (IdentityStatus.APPROVED, IdentityStatus.ENROLLED)
                and row.fingerprint == fingerprint
            )
            if token is not None and not known_key:
                self._spend_token(db, token, device, now.timestamp())
                row = self._upsert(
                    db, row, device, IdentityStatus.APPROVED, fingerprint, csr_pem, now
                )
            if row is not None and row.status in (IdentityStatus.APPROVED, IdentityStatus.ENROLLED):
                if row.fingerprint is not None and row.fingerprint != fingerprint:
                    raise EnrollmentError(
                        "key_mismatch", f"{device!r} was approved for another key"
                    )
                result, superseded = self._issue(db, row, csr_pem, fingerprint, now)
            else:
                result, superseded = self._pend(db, row, device, fingerprint, csr_pem, now), 0
        if superseded and self.on_revoked is not None:
            # a new key took over the device id: the old key's certificates stop working now
            self.on_revoked(device, self.revoked_serials())
        return result

    def _pend(
        self,
        db: Session,
        row: IdentityRecord | None,
        device: str,
        fingerprint: str,
        csr_pem: bytes,
        now: datetime,
    ) -> EnrollResult:
        pending = db.scalar(
            select(func.count())
            .select_from(IdentityRecord)
            .where(IdentityRecord.status == IdentityStatus.PENDING.value)
        )
        if row is None and (pending or 0) >= self.max_pending:
            raise EnrollmentError("too_many_pending", "too many requests wait for approval", 429)
        self._upsert(db, row, device, IdentityStatus.PENDING, fingerprint, csr_pem, now)
        log.info("event=enrollment_pending device=%s", device)
        return EnrollResult(IdentityStatus.PENDING, None, self.ca.cert_pem)

    def renew(self, device: str, csr_pem: bytes) -> EnrollResult:
        """A new certificate for the key of a current, unrevoked certificate of `device`.

        Raises EnrollmentError (not_enrolled, no_valid_certificate, CSR reasons).
        """
        device = _device(device)
        fingerprint = self._fingerprint(csr_pem, device)
        now = self.clock()
        with self.sessions.begin() as db:
            row = db.get(IdentityRecord, device)
            if row is None or row.status != IdentityStatus.ENROLLED:
                raise EnrollmentError("not_enrolled", f"{device!r} is not enrolled")
            current = db.scalar(
                select(DeviceCertificate).where(
                    DeviceCertificate.device == device,
                    DeviceCertificate.fingerprint == fingerprint,
                    DeviceCertificate.revoked_at.is_(None),
                    DeviceCertificate.not_after > now.timestamp(),
                )
            )
            if current is None:
                raise EnrollmentError("no_valid_certificate", "no current certificate for this key")
            result, _ = self._issue(db, row, csr_pem, fingerprint, now)
        return result

    def _fingerprint(self, csr_pem: bytes, device: str) -> str:
        try:
            return public_key_fingerprint(load_csr(csr_pem, device).public_key())
        except CertificateError as exc:
            raise EnrollmentError(exc.reason, str(exc), 400) from exc

    def _spend_token(self, db: Session, token: str, device: str, now: float) -> None:
        row = db.get(EnrollmentToken, _hash(token), with_for_update=True)
        if row is None:
            raise EnrollmentError("bad_token", "unknown enrollment token")
        if row.used_at is not None:
            raise EnrollmentError("token_used", "the enrollment token was used already")
        if row.expires <= now:
            raise EnrollmentError("token_expired", "the enrollment token has expired")
        if row.device is not None and row.device != device:
            raise EnrollmentError("token_device", "the enrollment token is for another device")
        row.used_at, row.used_by = now, device

    def _upsert(
        self,
        db: Session,
        row: IdentityRecord | None,
        device: str,
        status: IdentityStatus,
        fingerprint: str,
        csr_pem: bytes,
        now: datetime,
    ) -> IdentityRecord:
        if row is None:
            row = IdentityRecord(device=device, created=now.timestamp())
            db.add(row)
        if (
            row.status not in (IdentityStatus.APPROVED, IdentityStatus.ENROLLED)
            or status == IdentityStatus.APPROVED
        ):
            row.status = status.value
            row.fingerprint = fingerprint
        row.csr = csr_pem.decode("ascii", "replace")
        row.updated = now.timestamp()
        return row

    def _issue(
        self, db: Session, row: IdentityRecord, csr_pem: bytes, fingerprint: str, now: datetime
    ) -> tuple[EnrollResult, int]:
        """Issue a certificate for this key and revoke those of any other key of the device;
        returns the result and how many were revoked."""
        try:
            issued = self.ca.issue_client(csr_pem, row.device, now, self.cert_valid)
        except CertificateError as exc:
            raise EnrollmentError(exc.reason, str(exc), 400) from exc
        db.add(
            DeviceCertificate(
                serial=str(issued.serial),
                device=row.device,
                fingerprint=fingerprint,
                not_before=issued.not_before.timestamp(),
                not_after=issued.not_after.timestamp(),
            )
        )
        row.status, row.fingerprint, row.updated = (
            IdentityStatus.ENROLLED.value,
            fingerprint,
            now.timestamp(),
        )
        log.info(
            "event=certificate_issued device=%s serial=%d not_after=%s",
            row.device,
            issued.serial,
            issued.not_after.isoformat(),
        )
        others = db.scalars(
            select(DeviceCertificate).where(
                DeviceCertificate.device == row.device,
                DeviceCertificate.fingerprint != fingerprint,
                DeviceCertificate.revoked_at.is_(None),
            )
        ).all()
        for cert in others:
            cert.revoked_at = now.timestamp()
        if others:
            log.warning("event=certificates_superseded device=%s count=%d", row.device, len(others))
        return EnrollResult(IdentityStatus.ENROLLED, issued.pem, self.ca.cert_pem), len(others)
