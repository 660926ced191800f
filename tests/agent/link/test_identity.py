"""The device's own key and certificate: made once, kept private, checked on arrival.

The controller side is the real CA and enrollment service behind httpx's MockTransport, so
these run without a server; tests/e2e/test_mtls_broker.py covers the same path over HTTP.
"""

from __future__ import annotations

import json
import stat
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from agent.link.identity import (
    DeviceIdentity,
    EnrollmentRefused,
    EnrollmentSettings,
    load_or_create_key,
    make_csr,
)
from controller.auth.ca import CertificateAuthority
from tests.security.pki import make_csr as foreign_csr

NOW = datetime.now(timezone.utc)


def test_key_is_made_once_with_mode_0600(tmp_path):
    path = tmp_path / "identity" / "device.key"
    key = load_or_create_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_key(path).private_numbers() == key.private_numbers()


def test_csr_names_the_device_and_is_self_signed(tmp_path):
    csr = x509.load_pem_x509_csr(make_csr(load_or_create_key(tmp_path / "k"), "cam-01"))
    assert csr.is_signature_valid
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "cam-01"


def _controller(ca: CertificateAuthority, answer_for_other_key: bool = False):
    asked: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.path)
        body = json.loads(request.content)
        if body.get("token") != "t0ken" and request.url.path == "/api/enroll":
            return httpx.Response(403, json={"detail": {"reason": "bad_token", "message": "no"}})
        csr = foreign_csr(body["device"])[1] if answer_for_other_key else body["csr"].encode()
        cert = ca.issue_client(csr, body["device"], NOW, timedelta(days=90))
        return httpx.Response(
            200,
            json={
                "status": "enrolled",
                "certificate": cert.pem.decode(),
                "ca": ca.cert_pem.decode(),
            },
        )

    return asked, lambda: httpx.Client(
        base_url="http://controller", transport=httpx.MockTransport(handle)
    )


def test_enrollment_stores_certificate_and_ca_and_then_asks_nothing(tmp_path):
    ca = CertificateAuthority.create("fleet", NOW)
    asked, client = _controller(ca)
    identity = DeviceIdentity(
        "cam-01",
        tmp_path,
        EnrollmentSettings(url="http://controller", token="t0ken"),
        client=client,
    )
    files = identity.ensure()
    assert files.ca.read_bytes() == ca.cert_pem
    assert ca.verify_issued(files.cert.read_bytes(), NOW).subject == "cam-01"
    identity.ensure()
    assert asked == ["/api/enroll"]


def test_refusal_carries_the_controllers_reason(tmp_path):
    _, client = _controller(CertificateAuthority.create("fleet", NOW))
    identity = DeviceIdentity(
        "cam-01",
        tmp_path,
        EnrollmentSettings(url="http://controller", token="wrong"),
        client=client,
    )
    with pytest.raises(EnrollmentRefused) as refused:
        identity.ensure()
    assert refused.value.reason == "bad_token"
    assert not (tmp_path / "device.pem").exists()


def test_certificate_for_another_key_is_not_stored(tmp_path):
    _, client = _controller(CertificateAuthority.create("fleet", NOW), answer_for_other_key=True)
    identity = DeviceIdentity(
        "cam-01",
        tmp_path,
        EnrollmentSettings(url="http://controller", token="t0ken"),
        client=client,
    )
    with pytest.raises(EnrollmentRefused) as refused:
        identity.ensure()
    assert refused.value.reason == "key_mismatch"
    assert not (tmp_path / "device.pem").exists()
