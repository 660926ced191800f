"""The whole identity path on real parts: an agent enrolls over the controller's REST API, talks
to a mosquitto running the generated TLS + ACL configuration, the controller ingests over its own
TLS listener, and a revocation through the API cuts the device off within seconds."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from agent.link.identity import (
    DeviceIdentity,
    EnrollmentRefused,
    EnrollmentSettings,
    RenewalTimer,
)
from agent.link.session import AgentSession, BrokerSettings
from controller.auth.ca import cert_info
from controller.auth.enrollment import IdentityRecord
from controller.demo.waiting import wait_until
from controller.server import Controller
from controller.settings import (
    ControllerSettings,
    HttpSettings,
    MqttSettings,
)
from controller.settings import (
    EnrollmentSettings as ControllerEnrollment,
)
from protocol.events import DeviceStatus
from protocol.messages import State
from tests.controller import operators
from tests.security.pki import SecureBroker

pytestmark = pytest.mark.e2e
DEVICE = "tls-cam-01"


@pytest.fixture
def stack(tmp_path) -> Iterator[tuple[SecureBroker, Controller]]:
    secure = SecureBroker(tmp_path / "pki").start()
    settings = ControllerSettings(
        data_dir=tmp_path / "controller",
        mqtt=MqttSettings(
            host="localhost",
            port=secure.policy.controller_port,
            client_id="ctl-e2e",
            ca_file=secure.files.fleet_ca,
            cert_file=secure.controller.cert,
            key_file=secure.controller.key,
        ),
        http=HttpSettings(port=0),
        enrollment=ControllerEnrollment(
            pki_dir=tmp_path / "pki",
            broker_files_dir=secure.files.directory,
            broker_pid_file=secure.pid_file,
        ),
    )
    controller = Controller(settings).start()
    try:
        yield secure, controller
    finally:
        controller.stop()
        secure.close()


def _online(controller: Controller) -> bool:
    with controller.sessions() as db:
        from controller.db import Device

        row = db.get(Device, DEVICE)
        return bool(row and row.online)


def test_enrolled_agent_reaches_the_controller_and_revocation_cuts_it_off(stack, tmp_path):
    secure, controller = stack
    admin = operators.auth_headers(controller.sessions)
    with httpx.Client(base_url=controller.api_url, headers=admin, timeout=10) as api:
        token = api.post("/api/enrollment/tokens", json={"device": DEVICE}).json()["token"]
    identity = DeviceIdentity(
        DEVICE,
        tmp_path / "agent" / "identity",
        EnrollmentSettings(url=controller.api_url, token=token),
    )
    files = identity.ensure()
    assert (files.key.stat().st_mode & 0o777) == 0o600
    assert cert_info(files.cert.read_bytes()).subject == DEVICE

    broker = BrokerSettings(
        host="localhost",
        port=secure.policy.device_port,
        ca_file=files.ca,
        cert_file=files.cert,
        key_file=files.key,
    )
    session = AgentSession(broker, DEVICE, lambda: State(device=DEVICE, status=DeviceStatus.ONLINE))
    session.client.reconnect_delay_set(1, 2)
    session.start()
    try:
        assert session.connected.wait(15)
        wait_until("the controller to see the device online", lambda: _online(controller), 15)

        # renewal while running: the new certificate serves the next connection, so once the
        # old one is refused by the broker the agent still gets back in
        old_serial = cert_info(files.cert.read_bytes()).serial
        later = DeviceIdentity(
            DEVICE,
            files.directory,
            EnrollmentSettings(url=controller.api_url),
            clock=lambda: datetime.now(timezone.utc) + timedelta(days=70),
        )
        timer = RenewalTimer(later, lambda f: session.reload_certificate(f.cert, f.key))
        assert timer.check()
        assert cert_info(files.cert.read_bytes()).serial != old_serial
        secure.revoked.append((old_serial, datetime.now(timezone.utc)))
        secure.access.revoked(DEVICE, secure.revoked, datetime.now(timezone.utc))
        wait_until("the agent back with its renewed certificate", lambda: session.connects == 2, 15)
        assert session.connected.wait(5)

        with httpx.Client(base_url=controller.api_url, headers=admin, timeout=10) as api:
            started = time.monotonic()
            # the renewed certificate and the one before it
            assert api.post(f"/api/enrollment/{DEVICE}/revoke").json() == {"revoked": 2}
        wait_until(
            "the revoked agent to be disconnected", lambda: not session.connected.is_set(), 5
        )
        assert time.monotonic() - started < 5
    finally:
        session.stop()
    with controller.sessions() as db:
        assert db.get(IdentityRecord, DEVICE).status == "revoked"
    with pytest.raises(EnrollmentRefused) as refused:
        DeviceIdentity(
            DEVICE, tmp_path / "again", EnrollmentSettings(url=controller.api_url)
        ).ensure()
    assert refused.value.reason == "revoked"


def test_enrollment_without_token_waits_for_an_operator(stack, tmp_path):
    _secure, controller = stack
    admin = operators.auth_headers(controller.sessions)
    identity = DeviceIdentity(
        DEVICE,
        tmp_path / "identity",
        EnrollmentSettings(url=controller.api_url, poll_s=0.2, wait_s=1.0),
    )
    with pytest.raises(TimeoutError):
        identity.ensure()
    with httpx.Client(base_url=controller.api_url, timeout=10) as anonymous:
        assert anonymous.get("/api/enrollment/identities").status_code == 401
        assert anonymous.post(f"/api/enrollment/{DEVICE}/approve").status_code == 401
    with httpx.Client(base_url=controller.api_url, headers=admin, timeout=10) as api:
        pending = api.get("/api/enrollment/identities", params={"status": "pending"}).json()
        assert [p["device"] for p in pending] == [DEVICE]
        assert api.post(f"/api/enrollment/{DEVICE}/approve").status_code == 204
    first = cert_info(identity.ensure().cert.read_bytes())
    assert first.subject == DEVICE
    # inside the last third of its lifetime the agent renews with the same key
    later = DeviceIdentity(
        DEVICE,
        tmp_path / "identity",
        EnrollmentSettings(url=controller.api_url),
        clock=lambda: datetime.now(timezone.utc) + timedelta(days=70),
    )
    renewed = cert_info(later.ensure().cert.read_bytes())
    assert renewed.serial != first.serial and renewed.fingerprint == first.fingerprint
    # not yet due: nothing is asked
    assert cert_info(identity.ensure().cert.read_bytes()).serial == renewed.serial
