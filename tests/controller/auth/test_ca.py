"""The controller's CA: certificates bound to device ids, CRLs, renewal window, key files."""

from __future__ import annotations

import stat
from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509

from controller.auth.ca import CertificateAuthority, CertificateError, cert_info, needs_renewal
from tests.security.pki import make_csr

NOW = datetime(2026, 12, 1, tzinfo=timezone.utc)


@pytest.fixture
def ca(tmp_path) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(tmp_path / "ca")


def test_ca_key_is_private_and_reloads(tmp_path, ca):
    key = tmp_path / "ca" / "ca.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    again = CertificateAuthority.load_or_create(tmp_path / "ca")
    assert again.cert_pem == ca.cert_pem


def test_client_certificate_names_the_device_in_cn_and_san(ca):
    _, csr = make_csr("cam-01")
    issued = ca.issue_client(csr, "cam-01", NOW, timedelta(days=30))
    cert = x509.load_pem_x509_certificate(issued.pem)
    assert issued.subject == "cam-01"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["cam-01"]
    assert issued.not_after - issued.not_before == timedelta(days=30, minutes=5)
    assert ca.verify_issued(issued.pem, NOW).serial == issued.serial


def test_csr_for_another_device_is_refused(ca):
    _, csr = make_csr("cam-02")
    with pytest.raises(CertificateError) as refused:
        ca.issue_client(csr, "cam-01", NOW)
    assert refused.value.reason == "device_mismatch"


def test_garbage_csr_and_bad_device_id_are_refused(ca):
    with pytest.raises(CertificateError) as garbage:
        ca.issue_client(b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n", "cam-01", NOW)
    assert garbage.value.reason == "bad_csr"
    _, csr = make_csr("Cam_01")
    with pytest.raises(CertificateError) as bad_id:
        ca.issue_client(csr, "Cam_01", NOW)
    assert bad_id.value.reason == "bad_device_id"


def test_foreign_and_expired_certificates_are_refused(ca):
    other = CertificateAuthority.create("other", NOW)
    _, csr = make_csr("cam-01")
    foreign = other.issue_client(csr, "cam-01", NOW)
    with pytest.raises(CertificateError) as not_ours:
        ca.verify_issued(foreign.pem, NOW)
    assert not_ours.value.reason == "foreign_certificate"
    short = ca.issue_client(csr, "cam-01", NOW, timedelta(days=1))
    with pytest.raises(CertificateError) as expired:
        ca.verify_issued(short.pem, NOW + timedelta(days=2))
    assert expired.value.reason == "expired"


def test_crl_lists_revoked_serials_and_is_signed_by_the_ca(ca):
    _, csr = make_csr("cam-01")
    issued = ca.issue_client(csr, "cam-01", NOW)
    crl = x509.load_pem_x509_crl(ca.crl([(issued.serial, NOW)], NOW))
    assert crl.is_signature_valid(ca.cert.public_key())
    assert crl.get_revoked_certificate_by_serial_number(issued.serial) is not None
    assert crl.next_update_utc is not None and crl.next_update_utc > NOW + timedelta(days=7)


def test_renewal_window_is_the_last_third():
    start = NOW
    end = NOW + timedelta(days=90)
    assert not needs_renewal(start, end, NOW + timedelta(days=59))
    assert needs_renewal(start, end, NOW + timedelta(days=61))


def test_server_certificate_carries_ip_and_dns_names(ca):
    pair = ca.issue_server(["broker.example", "127.0.0.1"], NOW)
    cert = x509.load_pem_x509_certificate(pair.cert.pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["broker.example"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert cert_info(pair.cert.pem).subject == "broker.example"
