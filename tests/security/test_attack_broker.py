"""Attacks on the broker, against a real mosquitto running the generated TLS + ACL configuration.

A forbidden publish is dropped silently by MQTT 3.1.1, so each test follows it with an allowed
publish from the same client: messages of one client arrive in order, so once the allowed one
reached the controller, the forbidden one would have reached it before.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest

from controller.auth.acl import DYNSEC_TOPIC, disconnect_payload
from controller.auth.ca import CertificateError
from tests.security.pki import MAX_PACKET, SecureBroker

pytestmark = pytest.mark.e2e
DIGEST = "ab" * 32


@pytest.fixture
def secure_broker(tmp_path) -> Iterator[SecureBroker]:
    """A mosquitto running the generated TLS + ACL configuration."""
    broker = SecureBroker(tmp_path / "pki").start()
    try:
        yield broker
    finally:
        broker.close()


def _controller_watching(broker: SecureBroker, topic: str = "#"):
    ctl = broker.connect(broker.controller, "edgefleet-ctl-watch", controller=True, clean=True)
    assert ctl.connected.is_set()
    assert ctl.subscribe(topic) == 1
    return ctl


def _device(broker: SecureBroker, name: str):
    conn = broker.connect(broker.device(name), name)
    assert conn.connected.is_set(), f"{name} should connect"
    return conn


def _assert_dropped(
    broker: SecureBroker, attacker, ctl, forbidden: str, payload: bytes = b"x"
) -> None:
    attacker.publish(forbidden, payload)
    own = broker.topics.health(attacker.client._client_id.decode())
    attacker.publish(own, b"sentinel")
    assert ctl.wait_for(own) is not None, "the allowed sentinel never arrived"
    assert forbidden not in ctl.topics_seen()


def test_anonymous_plain_client_is_refused(secure_broker):
    """Anonymous client without TLS on the device port."""
    conn = secure_broker.connect(None, "anon", tls=False, wait=3)
    assert not conn.connected.is_set()


def test_tls_client_without_certificate_is_refused(secure_broker):
    """TLS client that presents no certificate."""
    conn = secure_broker.connect(None, "no-cert-01", wait=3)
    assert conn.refused.is_set()
    assert not conn.connected.is_set()


def test_certificate_from_foreign_ca_is_refused(secure_broker):
    """Certificate signed by a CA the fleet does not trust."""
    conn = secure_broker.connect(secure_broker.foreign_device("cam-b"), "cam-b", wait=3)
    assert not conn.connected.is_set()


def test_expired_certificate_is_refused(secure_broker):
    """Device certificate past its expiry."""
    past = datetime.now(timezone.utc) - timedelta(days=10)
    old = secure_broker.device("cam-old", valid=timedelta(days=1), now=past)
    conn = secure_broker.connect(old, "cam-old", wait=3)
    assert not conn.connected.is_set()


def test_revoked_certificate_is_refused_on_connect(secure_broker):
    """Device whose certificate was revoked tries to connect again."""
    ident = secure_broker.device("cam-rev")
    first = secure_broker.connect(ident, "cam-rev")
    assert first.connected.is_set()
    first.close()
    secure_broker.revoke(ident)
    again = secure_broker.connect(ident, "cam-rev", wait=3)
    assert not again.connected.is_set()


def test_revoked_device_is_disconnected_within_seconds(secure_broker):
    """Revoked device that is connected right now keeps its session."""
    ident = secure_broker.device("cam-live")
    conn = secure_broker.connect(ident, "cam-live")
    assert conn.connected.is_set()
    conn.client.reconnect_delay_set(60, 120)  # a reconnect would also be refused; keep it simple
    started = time.monotonic()
    secure_broker.revoke(ident)
    assert conn.disconnected.wait(5), "the revoked device is still connected"
    assert time.monotonic() - started < 5


def test_device_cannot_write_another_devices_state(secure_broker):
    """Device A forges B's retained state (online/offline, active bundle)."""
    ctl = _controller_watching(secure_broker)
    a = _device(secure_broker, "cam-a")
    _assert_dropped(secure_broker, a, ctl, secure_broker.topics.state("cam-b"))


def test_device_cannot_write_another_devices_detections(secure_broker):
    """Device A injects detections in B's name."""
    ctl = _controller_watching(secure_broker)
    a = _device(secure_broker, "cam-a")
    _assert_dropped(secure_broker, a, ctl, secure_broker.topics.det("cam-b"))


def test_device_cannot_forge_another_devices_events(secure_broker):
    """Device A forges B's deployment events or chunk requests."""
    ctl = _controller_watching(secure_broker)
    a = _device(secure_broker, "cam-a")
    _assert_dropped(secure_broker, a, ctl, secure_broker.topics.evt("cam-b"))


def test_device_cannot_send_commands(secure_broker):
    """Device A publishes a command to B (or to itself)."""
    ctl = _controller_watching(secure_broker)
    a = _device(secure_broker, "cam-a")
    _assert_dropped(secure_broker, a, ctl, secure_broker.topics.cmd("cam-b"))
    assert secure_broker.topics.cmd("cam-a") not in ctl.topics_seen()
    _assert_dropped(secure_broker, a, ctl, secure_broker.topics.cmd("cam-a"))


def test_device_cannot_poison_bundle_chunks(secure_broker):
    """Device publishes garbage on a bundle's chunk topic to break every deploy."""
    ctl = _controller_watching(secure_broker)
    a = _device(secure_broker, "cam-a")
    _assert_dropped(secure_broker, a, ctl, secure_broker.topics.bundle_chunks(DIGEST))


def test_device_cannot_read_another_devices_commands(secure_broker):
    """Device A subscribes to B's command topic."""
    a = _device(secure_broker, "cam-a")
    # mosquitto's acl_file grants the SUBSCRIBE and filters each delivery by the read right
    a.subscribe(secure_broker.topics.cmd("cam-b"))
    ctl = _controller_watching(secure_broker, secure_broker.topics.cmd("cam-b"))
    ctl.publish(secure_broker.topics.cmd("cam-b"), b"for b only")
    assert ctl.wait_for(secure_broker.topics.cmd("cam-b")) is not None
    a.publish(secure_broker.topics.health("cam-a"), b"sync")  # one round trip through the broker
    assert secure_broker.topics.cmd("cam-b") not in a.topics_seen()


def test_device_cannot_read_the_fleets_telemetry(secure_broker):
    """Device A subscribes to every topic to watch other devices."""
    a = _device(secure_broker, "cam-a")
    a.subscribe("#")
    a.subscribe(f"{secure_broker.topics.prefix}/dev/+/det")
    b = _device(secure_broker, "cam-b")
    ctl = _controller_watching(secure_broker)
    b.publish(secure_broker.topics.det("cam-b"), b"private")
    assert ctl.wait_for(secure_broker.topics.det("cam-b")) is not None
    a.publish(secure_broker.topics.health("cam-a"), b"sync")
    assert ctl.wait_for(secure_broker.topics.health("cam-a")) is not None
    assert a.messages == []


def test_device_may_read_its_commands_and_bundle_chunks(secure_broker):
    """Baseline: the rights a device needs still work, or the refusals above prove nothing."""
    a = _device(secure_broker, "cam-a")
    assert a.subscribe(secure_broker.topics.cmd("cam-a")) == 1
    assert a.subscribe(secure_broker.topics.bundle_chunks(DIGEST)) == 1
    ctl = _controller_watching(secure_broker)
    ctl.publish(secure_broker.topics.cmd("cam-a"), b"cmd")
    ctl.publish(secure_broker.topics.bundle_chunks(DIGEST), b"chunk")
    assert a.wait_for(secure_broker.topics.cmd("cam-a")) is not None
    assert a.wait_for(secure_broker.topics.bundle_chunks(DIGEST)) is not None


def test_device_cannot_take_over_another_devices_client_id(secure_broker):
    """Device A connects with B's client id to steal B's session and queued commands."""
    b = _device(secure_broker, "cam-b")
    assert b.subscribe(secure_broker.topics.cmd("cam-b")) == 1
    thief = secure_broker.connect(secure_broker.device("cam-a"), "cam-b")
    assert thief.connected.is_set()
    ctl = _controller_watching(secure_broker)
    ctl.publish(secure_broker.topics.cmd("cam-b"), b"for b only")
    assert b.wait_for(secure_broker.topics.cmd("cam-b")) is not None
    assert not b.disconnected.is_set(), "B's session was taken over"
    assert thief.messages == []


def test_oversized_message_is_refused(secure_broker):
    """Device floods the broker with a message over the packet size limit."""
    ctl = _controller_watching(secure_broker)
    a = _device(secure_broker, "cam-a")
    a.client.reconnect_delay_set(60, 120)
    a.client.publish(secure_broker.topics.det("cam-a"), b"x" * (MAX_PACKET + 1), qos=1)
    assert a.disconnected.wait(5), "the broker kept a client that sent an oversized packet"
    b = _device(secure_broker, "cam-b")
    b.publish(secure_broker.topics.det("cam-b"), b"small")
    assert ctl.wait_for(secure_broker.topics.det("cam-b")) is not None
    assert secure_broker.topics.det("cam-a") not in ctl.topics_seen()


def test_device_certificate_is_refused_on_the_controllers_listener(secure_broker):
    """Device connects where client ids are free, to pick one."""
    conn = secure_broker.connect(
        secure_broker.device("cam-a"), "edgefleet-controller", controller=True, wait=3
    )
    assert not conn.connected.is_set()


def test_device_cannot_use_the_brokers_admin_api(secure_broker):
    """Device sends a dynamic-security request to disconnect another device."""
    b = _device(secure_broker, "cam-b")
    a = _device(secure_broker, "cam-a")
    ctl = _controller_watching(secure_broker)
    a.publish(DYNSEC_TOPIC, disconnect_payload("cam-b"))
    a.publish(secure_broker.topics.health("cam-a"), b"sync")
    assert ctl.wait_for(secure_broker.topics.health("cam-a")) is not None
    b.publish(secure_broker.topics.health("cam-b"), b"still here")
    assert ctl.wait_for(secure_broker.topics.health("cam-b")) is not None
    assert not b.disconnected.is_set()


def test_no_device_certificate_for_the_controllers_name(secure_broker):
    """Enrollment under the controller's user name to gain its rights."""
    with pytest.raises(CertificateError) as refused:
        secure_broker.device(secure_broker.policy.controller_identity)
    assert refused.value.reason == "bad_device_id"


def test_controller_reads_every_devices_topics(secure_broker):
    """Baseline: the ACL must not lock out the controller's ingest."""
    ctl = _controller_watching(secure_broker, f"{secure_broker.topics.prefix}/dev/#")
    a, b = _device(secure_broker, "cam-a"), _device(secure_broker, "cam-b")
    sent = []
    for dev in (a, b):
        name = dev.client._client_id.decode()
        for topic in (
            secure_broker.topics.state(name),
            secure_broker.topics.det(name),
            secure_broker.topics.evt(name),
            secure_broker.topics.ack(name),
        ):
            dev.publish(topic, b"ok")
            sent.append(topic)
    for topic in sent:
        assert ctl.wait_for(topic) is not None, topic
