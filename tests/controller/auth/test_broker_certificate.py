"""The broker's server certificate is renewed in its renewal window, under the same names, and a
real mosquitto serves the new one after the reload; before the window nothing changes."""

from __future__ import annotations

import socket
import ssl
from datetime import datetime, timedelta, timezone

from cryptography import x509

from controller.auth.acl import (
    BrokerAccess,
    BrokerFiles,
    pid_file_reloader,
    renew_server_certificate,
)
from controller.auth.ca import CertificateAuthority, write_identity
from controller.demo.broker import SecureEndpoint, start_secure_broker
from controller.demo.waiting import wait_until
from controller.server import Controller
from controller.settings import (
    ControllerSettings,
    EnrollmentSettings,
    HttpSettings,
    MqttSettings,
)
from protocol.topics import Topics


def served_serial(end: SecureEndpoint) -> int:
    """The serial of the certificate the broker's controller listener presents now."""
    ctx = ssl.create_default_context(cafile=str(end.fleet_ca))
    ctx.load_cert_chain(end.controller_cert, end.controller_key)
    with (
        socket.create_connection(("127.0.0.1", end.controller_port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def names(pem: bytes) -> list[str]:
    cert = x509.load_pem_x509_certificate(pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [
        *san.get_values_for_type(x509.DNSName),
        *map(str, san.get_values_for_type(x509.IPAddress)),
    ]


def test_a_certificate_in_its_last_third_is_renewed_and_served_after_the_reload(tmp_path):
    pki = tmp_path / "pki"
    broker, end = start_secure_broker(pki, tmp_path / "broker", Topics().prefix)
    try:
        fleet = CertificateAuthority.load_or_create(pki / "fleet")
        reload = pid_file_reloader(end.pid_file)
        now = datetime.now(timezone.utc)
        # a year-long certificate issued 250 days ago: in the last third of its life
        aged = fleet.issue_server(["localhost", "127.0.0.1"], now - timedelta(days=250))
        write_identity(end.files.directory, "server", aged)
        reload()
        wait_until("the aged certificate served", lambda: served_serial(end) == aged.cert.serial)

        access = BrokerAccess(end.files, fleet, reload, lambda _topic, _payload: None)
        assert access.renew_server(now)
        fresh = x509.load_pem_x509_certificate(end.files.server_cert.read_bytes())
        assert fresh.serial_number != aged.cert.serial
        assert fresh.not_valid_before_utc <= now <= fresh.not_valid_after_utc
        assert fresh.not_valid_after_utc - fresh.not_valid_before_utc == timedelta(
            days=365, minutes=5
        )
        assert names(end.files.server_cert.read_bytes()) == ["localhost", "127.0.0.1"]
        wait_until(
            "the renewed certificate served", lambda: served_serial(end) == fresh.serial_number
        )
        # renewed: not due again for months
        assert not access.renew_server(now + timedelta(days=30))
    finally:
        broker.close()


def test_nothing_changes_before_the_window_or_without_a_certificate(tmp_path):
    fleet = CertificateAuthority.load_or_create(tmp_path / "pki" / "fleet")
    files_dir = tmp_path / "broker-files"
    files_dir.mkdir()
    files = BrokerFiles(files_dir)
    now = datetime.now(timezone.utc)
    assert renew_server_certificate(files, fleet, now) is None  # no server certificate here
    write_identity(files_dir, "server", fleet.issue_server(["broker.example"], now))
    before = files.server_cert.read_bytes(), files.server_key.read_bytes()
    assert renew_server_certificate(files, fleet, now + timedelta(days=200)) is None
    assert (files.server_cert.read_bytes(), files.server_key.read_bytes()) == before
    renewed = renew_server_certificate(files, fleet, now + timedelta(days=250))
    assert renewed is not None
    assert files.server_key.read_bytes() != before[1]
    assert names(files.server_cert.read_bytes()) == ["broker.example"]


def test_a_controller_that_writes_the_broker_files_renews_a_due_certificate_at_start(
    tmp_path, mosquitto
):
    pki = tmp_path / "pki"
    fleet = CertificateAuthority.load_or_create(pki / "fleet")
    files = BrokerFiles(tmp_path / "broker-files")
    files.directory.mkdir()
    aged = fleet.issue_server(["broker.example"], datetime.now(timezone.utc) - timedelta(days=300))
    write_identity(files.directory, "server", aged)
    settings = ControllerSettings(
        data_dir=tmp_path / "controller",
        mqtt=MqttSettings(port=mosquitto.port, client_id="cert-keeper"),
        http=HttpSettings(port=0),
        enrollment=EnrollmentSettings(pki_dir=pki, broker_files_dir=files.directory),
    )
    controller = Controller(settings).start()
    try:

        def renewed() -> bool:
            cert = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
            return cert.serial_number != aged.cert.serial

        wait_until("the server certificate renewed", renewed, 10)
        assert names(files.server_cert.read_bytes()) == ["broker.example"]
    finally:
        controller.stop()
