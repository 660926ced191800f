"""A real mosquitto started with the generated TLS + ACL configuration, and TLS paho clients."""

from __future__ import annotations

import ssl
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import paho.mqtt.client as mqtt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion

from controller.auth.acl import (
    BrokerAccess,
    BrokerFiles,
    BrokerPolicy,
    mosquitto_config,
    write_broker_files,
)
from controller.auth.ca import CertificateAuthority, KeyAndCertificate, write_identity
from controller.demo.broker import MosquittoBroker, free_port
from protocol.topics import DEFAULT_PREFIX, Topics

MAX_PACKET = 64 * 1024


def make_csr(device_id: str, key_pem: bytes | None = None) -> tuple[bytes, bytes]:
    """A P-256 key (PEM; fresh unless `key_pem` is given) and a CSR (PEM) naming `device_id`."""
    if key_pem is None:
        key = ec.generate_private_key(ec.SECP256R1())
    else:
        loaded = serialization.load_pem_private_key(key_pem, password=None)
        assert isinstance(loaded, ec.EllipticCurvePrivateKey)
        key = loaded
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, csr.public_bytes(serialization.Encoding.PEM)


@dataclass
class Identity:
    name: str
    cert: Path
    key: Path
    serial: int


@dataclass
class Connection:
    """A connected (or refused) paho client and what it saw."""

    client: mqtt.Client
    connected: threading.Event = field(default_factory=threading.Event)
    refused: threading.Event = field(default_factory=threading.Event)
    disconnected: threading.Event = field(default_factory=threading.Event)
    messages: list[mqtt.MQTTMessage] = field(default_factory=list)
    suback: list[int] = field(default_factory=list)
    subscribed: threading.Event = field(default_factory=threading.Event)
    arrived: threading.Condition = field(default_factory=threading.Condition)

    def wait_for(self, topic: str, timeout: float = 10.0) -> mqtt.MQTTMessage | None:
        with self.arrived:
            self.arrived.wait_for(lambda: any(m.topic == topic for m in self.messages), timeout)
            return next((m for m in self.messages if m.topic == topic), None)

    def topics_seen(self) -> set[str]:
        with self.arrived:
            return {m.topic for m in self.messages}

    def subscribe(self, topic: str, timeout: float = 10.0) -> int:
        """Subscribe at QoS 1 and return the broker's granted code (128 = refused)."""
        self.subscribed.clear()
        self.client.subscribe(topic, qos=1)
        if not self.subscribed.wait(timeout):
            raise TimeoutError(f"no SUBACK for {topic}")
        return self.suback[-1]

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class SecureBroker:
    """The fleet CA, the service CA, the generated files and a mosquitto using them."""

    def __init__(self, workdir: Path, prefix: str = DEFAULT_PREFIX) -> None:
        now = datetime.now(timezone.utc)
        self.now = now
        self.workdir = workdir
        self.fleet_ca = CertificateAuthority.load_or_create(workdir / "fleet")
        self.service_ca = CertificateAuthority.load_or_create(workdir / "service")
        self.files = BrokerFiles(workdir / "broker-files")
        self.policy = BrokerPolicy(
            prefix=prefix,
            device_port=free_port(),
            device_host="127.0.0.1",
            controller_port=free_port(),
            max_packet_size=MAX_PACKET,
        )
        self.topics = Topics(prefix)
        self.revoked: list[tuple[int, datetime]] = []
        write_broker_files(
            self.files,
            self.policy,
            self.fleet_ca,
            self.service_ca,
            ["localhost", "127.0.0.1"],
            [],
            now,
        )
        self.ids = workdir / "ids"
        self.controller = self._write(
            "controller", self.service_ca.issue_identity(self.policy.controller_identity, now)
        )
        self.broker = MosquittoBroker(
            self.policy.device_port,
            workdir=workdir / "mosquitto",
            security_config=mosquitto_config(self.policy, self.files),
            extra_config=f"pid_file {workdir / 'mosquitto.pid'}",
        )
        self.pid_file = workdir / "mosquitto.pid"
        self._clients: list[Connection] = []
        self.access = BrokerAccess(
            self.files, self.fleet_ca, self.broker.reload, self._control_publish
        )

    def _write(self, name: str, pair: KeyAndCertificate) -> Identity:
        key, cert = write_identity(self.ids, name, pair)
        return Identity(name, cert, key, pair.cert.serial)

    def device(
        self, device_id: str, *, valid: timedelta = timedelta(days=30), now: datetime | None = None
    ) -> Identity:
        """A device key and a fleet certificate for it, as enrollment would give."""
        key_pem, csr = make_csr(device_id)
        issued = self.fleet_ca.issue_client(csr, device_id, now or self.now, valid)
        return self._write(device_id, KeyAndCertificate(key_pem, issued))

    def foreign_device(self, device_id: str) -> Identity:
        """A certificate for `device_id` from a CA the broker does not trust."""
        other = CertificateAuthority.create("someone else's CA", self.now)
        key_pem, csr = make_csr(device_id)
        return self._write(
            f"foreign-{device_id}",
            KeyAndCertificate(key_pem, other.issue_client(csr, device_id, self.now)),
        )

    def revoke(self, identity: Identity) -> None:
        self.revoked.append((identity.serial, datetime.now(timezone.utc)))
        self.access.revoked(identity.name, self.revoked, datetime.now(timezone.utc))

    def _control_publish(self, topic: str, payload: bytes) -> None:
        ctl = self.connect(self.controller, "edgefleet-ctl-revoke", controller=True)
        try:
            ctl.publish(topic, payload)
        finally:
            ctl.close()

    def connect(
        self,
        identity: Identity | None,
        client_id: str,
        *,
        controller: bool = False,
        tls: bool = True,
        clean: bool = False,
        wait: float = 10.0,
    ) -> Connection:
        """A paho client; waits until it is connected or refused (see Connection)."""
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean)
        conn = Connection(client)
        if tls:
            ctx = ssl.create_default_context(cafile=str(self.files.fleet_ca))
            if identity is not None:
                ctx.load_cert_chain(identity.cert, identity.key)
            client.tls_set_context(ctx)

        def on_connect(_c, _u, _f, reason, _p):
            (conn.refused if reason.is_failure else conn.connected).set()

        def on_disconnect(_c, _u, _f, _r, _p):
            conn.disconnected.set()
            conn.refused.set()

        def on_message(_c, _u, msg):
            with conn.arrived:
                conn.messages.append(msg)
                conn.arrived.notify_all()

        def on_subscribe(_c, _u, _mid, codes, _p):
            conn.suback.extend(int(getattr(c, "value", c)) for c in codes)
            conn.subscribed.set()

        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        client.on_message = on_message
        client.on_subscribe = on_subscribe
        port = self.policy.controller_port if controller else self.policy.device_port
        self._clients.append(conn)
        try:
            client.connect("localhost", port, 30)
        except (OSError, ssl.SSLError):
            conn.refused.set()
            return conn
        client.loop_start()
        deadline = threading.Event()
        for _ in range(int(wait * 20)):
            if conn.connected.is_set() or conn.refused.is_set():
                break
            deadline.wait(0.05)
        return conn

    def start(self) -> SecureBroker:
        self.broker.start()
        return self

    def close(self) -> None:
        for conn in self._clients:
            conn.client.loop_stop()
            conn.client.disconnect()
        self.broker.close()
