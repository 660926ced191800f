"""Enrollment routes: the device-facing ones (enroll, renew) apart from the operators' ones
(pending list, approve, reject, revoke, tokens, pre-approval)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, HTTPException, Response
from pydantic import BaseModel, ConfigDict, Field

from controller.api.security import DEVICE
from controller.auth.enrollment import EnrollmentError, EnrollmentService, IdentityStatus

# a P-256 or RSA-4096 CSR in PEM is well under this
_MAX_CSR = 8192


class EnrollIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device: str = Field(max_length=64)
    csr: str = Field(max_length=_MAX_CSR, description="PEM certificate signing request")
    token: str | None = Field(None, max_length=128, description="one-time enrollment token")


class RenewIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device: str = Field(max_length=64)
    csr: str = Field(max_length=_MAX_CSR, description="CSR signed by the current device key")


class EnrollOut(BaseModel):
    status: str
    certificate: str | None = None
    ca: str


class IdentityOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    device: str
    status: str
    fingerprint: str | None
    created: float
    updated: float


class TokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device: str | None = Field(None, max_length=64, description="bind the token to one device")
    ttl_s: Annotated[int, Field(ge=60, le=30 * 86400)] = 86400


class TokenOut(BaseModel):
    token: str
    device: str | None
    expires: float


class PreapproveIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device: str = Field(max_length=64)
    fingerprint: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")


def _refused(exc: EnrollmentError) -> HTTPException:
    return HTTPException(exc.status, {"reason": exc.reason, "message": str(exc)})


def enrollment_device_router(service: EnrollmentService) -> APIRouter:
    """POST /api/enroll and /api/enroll/renew: reached by devices that have no certificate yet
    (or whose CSR signature proves they hold the key of a current one)."""
    # DEVICE: no operator; a one-time token, an approval or the CSR's key decides
    router = APIRouter(tags=[DEVICE])

    @router.post("/api/enroll", responses={202: {"model": EnrollOut}})
    def enroll(body: EnrollIn, response: Response) -> EnrollOut:
        try:
            result = service.enroll(body.device, body.csr.encode(), body.token)
        except EnrollmentError as exc:
            raise _refused(exc) from None
        out = EnrollOut(
            status=result.status.value,
            certificate=result.certificate.decode() if result.certificate else None,
            ca=result.ca.decode(),
        )
        if result.status == IdentityStatus.PENDING:
            response.status_code = 202  # accepted: waits for an operator's approval
        return out

    @router.post("/api/enroll/renew")
    def renew(body: RenewIn) -> EnrollOut:
        try:
            result = service.renew(body.device, body.csr.encode())
        except EnrollmentError as exc:
            raise _refused(exc) from None
        cert = result.certificate.decode() if result.certificate else None
        return EnrollOut(status=result.status.value, certificate=cert, ca=result.ca.decode())

    return router


def enrollment_operator_router(service: EnrollmentService) -> APIRouter:
    """Operators' enrollment routes; create_app puts them behind operator authentication."""
    router = APIRouter()

    @router.get("/api/enrollment/identities")
    def identities(status: IdentityStatus | None = None) -> list[IdentityOut]:
        return [IdentityOut.model_validate(row) for row in service.identities(status)]

    @router.post("/api/enrollment/tokens", status_code=201)
    def create_token(body: TokenIn) -> TokenOut:
        try:
            created = service.create_token(body.device, timedelta(seconds=body.ttl_s))
        except EnrollmentError as exc:
            raise _refused(exc) from None
        return TokenOut(token=created.token, device=created.device, expires=created.expires)

    @router.post("/api/enrollment/preapproved", status_code=204)
    def preapprove(body: PreapproveIn) -> None:
        try:
            service.preapprove(body.device, body.fingerprint)
        except EnrollmentError as exc:
            raise _refused(exc) from None

    @router.post("/api/enrollment/{device_id}/approve", status_code=204)
    def approve(device_id: str) -> None:
        try:
            service.approve(device_id)
        except EnrollmentError as exc:
            raise _refused(exc) from None

    @router.post("/api/enrollment/{device_id}/reject", status_code=204)
    def reject(device_id: str) -> None:
        try:
            service.reject(device_id)
        except EnrollmentError as exc:
            raise _refused(exc) from None

    @router.post("/api/enrollment/{device_id}/revoke")
    def revoke(device_id: str) -> dict[str, int]:
        try:
            return {"revoked": service.revoke(device_id)}
        except EnrollmentError as exc:
            raise _refused(exc) from None

    return router
