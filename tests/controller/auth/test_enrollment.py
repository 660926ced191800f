"""Enrollment: one-time tokens, pre-approval, pending approval, revocation and renewal."""

from __future__ import annotations

from datetime import timedelta

import pytest

from controller.auth.ca import CertificateAuthority, cert_info
from controller.auth.enrollment import EnrollmentError, EnrollmentService, IdentityStatus
from controller.db import make_engine, session_factory, upgrade_database
from tests.security.pki import make_csr


@pytest.fixture
def revocations() -> list:
    """What the service told the broker side about revocations."""
    return []


@pytest.fixture
def service(tmp_path, db_url, revocations):
    upgrade_database(db_url)
    engine = make_engine(db_url)
    svc = EnrollmentService(
        session_factory(engine),
        CertificateAuthority.load_or_create(tmp_path / "ca"),
        on_revoked=lambda device, serials: revocations.append((device, serials)),
    )
    try:
        yield svc
    finally:
        engine.dispose()


def _reason(call) -> str:
    with pytest.raises(EnrollmentError) as refused:
        call()
    return refused.value.reason


def test_one_time_token_gets_a_certificate_once(service):
    token = service.create_token(None, timedelta(hours=1)).token
    _, csr = make_csr("cam-01")
    result = service.enroll("cam-01", csr, token)
    assert result.status == IdentityStatus.ENROLLED
    assert result.certificate is not None and cert_info(result.certificate).subject == "cam-01"
    _, other = make_csr("cam-02")
    assert _reason(lambda: service.enroll("cam-02", other, token)) == "token_used"


def test_a_device_enrolled_with_a_token_enrolls_again_with_its_key_and_the_spent_token(service):
    # the token stays in the device's settings; a lost or expired certificate must not lock
    # it out, while another key with that token is still refused
    token = service.create_token("cam-01", timedelta(hours=1)).token
    key, csr = make_csr("cam-01")
    first = service.enroll("cam-01", csr, token)
    again = service.enroll("cam-01", make_csr("cam-01", key)[1], token)
    assert first.status == again.status == IdentityStatus.ENROLLED
    assert cert_info(again.certificate).serial != cert_info(first.certificate).serial
    _, other = make_csr("cam-01")
    assert _reason(lambda: service.enroll("cam-01", other, token)) == "token_used"


def test_expired_unknown_and_misbound_tokens_are_refused(service):
    _, csr = make_csr("cam-01")
    expired = service.create_token(None, timedelta(seconds=-1)).token
    assert _reason(lambda: service.enroll("cam-01", csr, expired)) == "token_expired"
    assert _reason(lambda: service.enroll("cam-01", csr, "not-a-token")) == "bad_token"
    bound = service.create_token("cam-09", timedelta(hours=1)).token
    assert _reason(lambda: service.enroll("cam-01", csr, bound)) == "token_device"
    assert service.identities() == []


def test_without_token_a_device_waits_for_approval(service):
    _, csr = make_csr("cam-01")
    assert service.enroll("cam-01", csr).status == IdentityStatus.PENDING
    assert [i.device for i in service.identities(IdentityStatus.PENDING)] == ["cam-01"]
    assert service.enroll("cam-01", csr).certificate is None
    service.approve("cam-01")
    assert service.enroll("cam-01", csr).certificate is not None


def test_approval_pins_the_pending_key(service):
    _, csr = make_csr("cam-01")
    service.enroll("cam-01", csr)
    service.approve("cam-01")
    _, impostor = make_csr("cam-01")
    assert _reason(lambda: service.enroll("cam-01", impostor)) == "key_mismatch"


def test_preapproved_device_enrolls_without_token(service):
    service.preapprove("cam-07")
    _, csr = make_csr("cam-07")
    assert service.enroll("cam-07", csr).certificate is not None


def test_rejected_device_is_refused(service):
    _, csr = make_csr("cam-01")
    service.enroll("cam-01", csr)
    service.reject("cam-01")
    assert _reason(lambda: service.enroll("cam-01", csr)) == "rejected"


def test_revocation_lists_serials_and_refuses_the_device(service, revocations):
    _, csr = make_csr("cam-01")
    service.preapprove("cam-01")
    serial = cert_info(service.enroll("cam-01", csr).certificate).serial
    assert service.revoke("cam-01") == 1
    assert [s for s, _ in service.revoked_serials()] == [serial]
    assert [(device, [s for s, _ in serials]) for device, serials in revocations] == [
        ("cam-01", [serial])
    ]
    assert _reason(lambda: service.enroll("cam-01", csr)) == "revoked"
    assert _reason(lambda: service.renew("cam-01", csr)) == "not_enrolled"


def test_renewal_needs_the_key_of_a_current_certificate(service):
    _, csr = make_csr("cam-01")
    service.preapprove("cam-01")
    first = cert_info(service.enroll("cam-01", csr).certificate)
    renewed = cert_info(service.renew("cam-01", csr).certificate)
    assert renewed.serial != first.serial and renewed.fingerprint == first.fingerprint
    _, other_key = make_csr("cam-01")
    assert _reason(lambda: service.renew("cam-01", other_key)) == "no_valid_certificate"


def test_pending_requests_are_capped(service):
    service.max_pending = 2
    for name in ("cam-01", "cam-02"):
        service.enroll(name, make_csr(name)[1])
    assert _reason(lambda: service.enroll("cam-03", make_csr("cam-03")[1])) == "too_many_pending"


def test_bad_device_id_and_csr_are_refused(service):
    assert _reason(lambda: service.enroll("Bad_Id", make_csr("cam-01")[1])) == "bad_device_id"
    assert _reason(lambda: service.enroll("cam-01", b"junk")) == "bad_csr"
    assert _reason(lambda: service.enroll("cam-01", make_csr("cam-02")[1])) == "device_mismatch"


def test_a_new_key_enrolled_with_a_token_supersedes_the_old_certificates(service, revocations):
    service.preapprove("cam-01")
    old = cert_info(service.enroll("cam-01", make_csr("cam-01")[1]).certificate)
    # reimaged device: new key, fresh token from an operator
    token = service.create_token("cam-01", timedelta(hours=1)).token
    new = cert_info(service.enroll("cam-01", make_csr("cam-01")[1], token).certificate)
    assert new.fingerprint != old.fingerprint
    assert [s for s, _ in service.revoked_serials()] == [old.serial]
    assert [device for device, _ in revocations] == ["cam-01"]
    # without a token, another key is refused outright
    assert _reason(lambda: service.enroll("cam-01", make_csr("cam-01")[1])) == "key_mismatch"
