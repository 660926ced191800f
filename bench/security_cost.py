"""What security costs: signed commands against unsigned ones, in the same run.

Two measurements, each signed and plain side by side:
- `sign_verify`: the controller's signing plus the agent's checks, in-process (µs per command);
- `round_trip`: the controller's CommandSender publishes through a real mosquitto, the agent's
  own MQTT session takes the command, its CommandHandler (with the guard, or without) answers,
  and the ack comes back to the controller side (ms per command, median).

- `tls_ingest`: detection batches from several devices into the real controller ingest
  (SQLite), through plain loopback and through the generated TLS listeners with client
  certificates (devices on theirs, the controller on its own), batches/s from first publish
  to last commit.

Prints one line `RESULT signed_cmd_ms=… plain_cmd_ms=… sign_verify_us=… tls_ingest_ratio=…`.
"""

from __future__ import annotations

import argparse
import queue
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import paho.mqtt.client as mqtt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion

from agent.commands import CommandGuard, CommandHandler, SeenCommands
from agent.link.session import AgentSession, BrokerSettings
from controller.auth.acl import BrokerFiles, BrokerPolicy, mosquitto_config, write_broker_files
from controller.auth.ca import CertificateAuthority, KeyAndCertificate, write_identity
from controller.auth.signing import CommandSigner
from controller.db import make_engine, session_factory, upgrade_database
from controller.demo.broker import MosquittoBroker, free_port
from controller.mqtt.commands import CommandSender
from controller.mqtt.ingest import Ingest, IngestStats
from controller.mqtt.session import Publisher
from controller.settings import IngestSettings, MqttSettings
from ota.commands import sign_command, verify_command
from ota.keys import SigningKey
from ota.trust import TrustStore
from ota.trust_file import load_trust_store, save_trust_store
from protocol.codec import decode, encode
from protocol.events import DeviceStatus
from protocol.messages import (
    Ack,
    Box,
    Detection,
    DetectionBatch,
    RestartPipeline,
    Snapshot,
    State,
    TrustUpdate,
)
from protocol.topics import Topics

DEVICE = "bench-sec-01"


class _Restarts:
    """A command target that does nothing but answer: the bench times the path, not the work."""

    def restart_pipeline(self) -> str:
        return "cameras=none model=none"

    def deploy(self, command: object) -> None:
        raise NotImplementedError

    def rollback(self, cmd_id: str) -> tuple[bool, str, str]:
        raise NotImplementedError

    def set_config(self, patch: object) -> tuple[bool, str, str]:
        raise NotImplementedError

    def trust_update(self, command: TrustUpdate) -> tuple[bool, str, str]:
        raise NotImplementedError

    def snapshot(self, command: Snapshot) -> None:
        raise NotImplementedError


def sign_verify_us(rounds: int) -> float:
    """Microseconds to sign one command and run the device's checks on it, median of 5."""
    key = SigningKey.generate()
    trust = TrustStore.from_keys(
        [SigningKey.generate().public_key()], command_keys=[key.public_key()]
    )
    samples = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(rounds):
            signed = sign_command(RestartPipeline(device=DEVICE), [key], now=time.time(), ttl_s=60)
            verify_command(signed, trust, DEVICE, time.time())
        samples.append((time.perf_counter() - start) / rounds * 1e6)
    return statistics.median(samples)


class _Device:
    """The agent side: its MQTT session and a command handler answering on the control thread."""

    def __init__(self, port: int, workdir: Path, trust_file: Path, signed: bool) -> None:
        self.session = AgentSession(BrokerSettings(port=port), DEVICE, self._state)
        self.seen = SeenCommands(workdir / f"seen-{uuid.uuid4().hex[:6]}.sqlite")
        guard = CommandGuard(DEVICE, lambda: load_trust_store(trust_file), self.seen)
        self.handler = CommandHandler(_Restarts(), self._ack, guard=guard if signed else None)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _state(self) -> State:
        return State(device=DEVICE, status=DeviceStatus.ONLINE)

    def _ack(self, cmd_id: str, ok: bool, result: str, detail: str = "") -> None:
        ack = Ack(device=DEVICE, cmd_id=cmd_id, ok=ok, result=result, detail=detail)
        self.session.publish(self.session.topics.ack(DEVICE), encode(ack), qos=1)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                item = self.session.inbox.get(timeout=0.1)
            except queue.Empty:
                continue
            if item.kind == "command":
                self.handler.handle(item.payload)
                done = getattr(self.session, "done", None)
                if done is not None:
                    done(item)

    def start(self) -> None:
        self.session.start()
        if not self.session.connected.wait(10):
            raise RuntimeError("the agent session did not connect")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.session.stop()
        self.seen.close()


class _AckWatcher:
    """The controller side's view of acks: the time each command id was answered."""

    def __init__(self, port: int) -> None:
        self.acks: dict[str, tuple[float, Ack]] = {}
        self._cond = threading.Condition()
        subscribed = threading.Event()
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"bench-acks-{uuid.uuid4().hex[:6]}"
        )
        client.on_connect = lambda c, *_: c.subscribe(Topics().ack(DEVICE), 1)
        client.on_subscribe = lambda *_: subscribed.set()
        client.on_message = self._on_message
        client.connect("127.0.0.1", port)
        client.loop_start()
        self.client = client
        if not subscribed.wait(10):
            self.close()
            raise RuntimeError("the ack watcher could not subscribe")

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        ack = decode(msg.payload, Ack)
        with self._cond:
            self.acks[ack.cmd_id] = (time.perf_counter(), ack)
            self._cond.notify_all()

    def wait(self, cmd_id: str, timeout: float = 10.0) -> tuple[float, Ack]:
        with self._cond:
            if not self._cond.wait_for(lambda: cmd_id in self.acks, timeout):
                raise RuntimeError(f"no ack for {cmd_id}")
            return self.acks[cmd_id]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def round_trip_ms(port: int, workdir: Path, count: int, *, signed: bool) -> float:
    """Median ms from CommandSender.send to the ack, over `count` commands one at a time."""
    key = SigningKey.generate()
    trust_file = workdir / f"trust-{'signed' if signed else 'plain'}.json"
    trust = TrustStore.from_keys(
        [SigningKey.generate().public_key()], command_keys=[key.public_key()]
    )
    save_trust_store(trust, trust_file)
    publisher = Publisher(MqttSettings(port=port), 20, f"bench-pub-{uuid.uuid4().hex[:6]}").start()
    device = _Device(port, workdir, trust_file, signed)
    watcher = _AckWatcher(port)
    try:
        if not publisher.wait_ready(10):
            raise RuntimeError("the controller publisher did not connect")
        device.start()
        signer = CommandSigner([key]) if signed else None
        sender = CommandSender(publisher, Topics(), signer=signer)
        samples = []
        for _ in range(count):
            command = RestartPipeline(device=DEVICE)
            start = time.perf_counter()
            sender.send(command)
            answered, ack = watcher.wait(command.id)
            if not ack.ok:
                raise RuntimeError(f"command refused: {ack.result} {ack.detail}")
            samples.append((answered - start) * 1000)
        return statistics.median(samples[max(1, count // 10) :])  # the first ones warm up
    finally:
        watcher.close()
        device.stop()
        publisher.stop()


# ---- TLS ingest: the real controller ingest behind a plain and behind the TLS listener ------

INGEST_DEVICES = 10


@dataclass
class _Endpoint:
    """Where devices and the controller connect, and with which files (none: plain)."""

    device_port: int
    controller_settings: MqttSettings
    device_tls: Callable[[str], tuple[str, str, str] | None]  # device id -> (ca, cert, key)


def _tls_broker(workdir: Path) -> tuple[MosquittoBroker, _Endpoint]:
    """A mosquitto with the generated production configuration, and certificates for all."""
    now = datetime.now(timezone.utc)
    fleet = CertificateAuthority.load_or_create(workdir / "fleet")
    service = CertificateAuthority.load_or_create(workdir / "service")
    files = BrokerFiles(workdir / "broker-files")
    policy = BrokerPolicy(
        prefix=Topics().prefix,
        device_port=free_port(),
        device_host="127.0.0.1",
        controller_port=free_port(),
    )
    write_broker_files(files, policy, fleet, service, ["localhost"], [], now)
    ids = workdir / "ids"
    ctl_key, ctl_cert = write_identity(
        ids, "controller", service.issue_identity(policy.controller_identity, now)
    )
    certs: dict[str, tuple[str, str, str]] = {}
    for n in range(INGEST_DEVICES):
        device = f"bench-tls-{n:02d}"
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device)]))
            .sign(key, hashes.SHA256())
            .public_bytes(serialization.Encoding.PEM)
        )
        pair = KeyAndCertificate(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            fleet.issue_client(csr, device, now),
        )
        key_path, cert_path = write_identity(ids, device, pair)
        certs[device] = (str(files.fleet_ca), str(cert_path), str(key_path))
    broker = MosquittoBroker(
        policy.device_port,
        workdir=workdir / "tls-broker",
        security_config=mosquitto_config(policy, files),
    )
    settings = MqttSettings(
        host="localhost",
        port=policy.controller_port,
        client_id="bench-ingest-tls",
        ca_file=files.fleet_ca,
        cert_file=ctl_cert,
        key_file=ctl_key,
    )
    return broker, _Endpoint(policy.device_port, settings, certs.get)


def _batch(device: str, n: int) -> bytes:
    box = Box(x1=0.1, y1=0.1, x2=0.3, y2=0.4)
    dets = tuple(
        Detection(
            camera="cam0", track_id=n * 5 + k, label="face", score=0.9, box=box, ts=time.time()
        )
        for k in range(5)
    )
    return encode(DetectionBatch(device=device, detections=dets))


def ingest_rate(endpoint: _Endpoint, workdir: Path, batches: int) -> float:
    """Detection batches per second from publish to commit through the real ingest."""
    url = f"sqlite:///{workdir / 'ingest.db'}"
    upgrade_database(url)
    engine = make_engine(url)
    stats = IngestStats()
    ingest = Ingest(
        endpoint.controller_settings, IngestSettings(), session_factory(engine), stats=stats
    )
    topics = Topics()
    devices = [f"bench-tls-{n:02d}" for n in range(INGEST_DEVICES)]
    clients: list[mqtt.Client] = []
    try:
        ingest.start()
        if not ingest.wait_ready(15):
            raise RuntimeError("the ingest did not connect")
        payloads = [(d, [_batch(d, n) for n in range(batches // len(devices))]) for d in devices]
        for device in devices:
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device)
            tls = endpoint.device_tls(device)
            if tls is not None:
                client.tls_set(ca_certs=tls[0], certfile=tls[1], keyfile=tls[2])
            client.max_inflight_messages_set(100)
            client.connect("localhost", endpoint.device_port, 30)
            client.loop_start()
            clients.append(client)
        total = sum(len(p) for _, p in payloads)
        start = time.perf_counter()
        for client, (device, items) in zip(clients, payloads, strict=True):
            for payload in items:
                client.publish(topics.det(device), payload, qos=1)
        deadline = time.monotonic() + 90
        while sum(stats.snapshot()["stored"].values()) < total:
            if time.monotonic() > deadline or stats.snapshot()["rejected"]:
                raise RuntimeError(f"ingest stored {stats.snapshot()} of {total} in time")
            time.sleep(0.01)
        return total / (time.perf_counter() - start)
    finally:
        for client in clients:
            client.disconnect()
            client.loop_stop()
        ingest.stop()
        engine.dispose()


def tls_ingest(batches: int) -> dict[str, float]:
    """Ingest throughput behind the TLS listeners over plain loopback, same run."""
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        plain_broker = MosquittoBroker(workdir=workdir / "plain-broker")
        plain = _Endpoint(
            plain_broker.port,
            MqttSettings(port=plain_broker.port, client_id="bench-ingest-plain"),
            lambda _device: None,
        )
        tls_broker, tls = _tls_broker(workdir)
        try:
            plain_broker.start()
            tls_broker.start()
            (workdir / "plain").mkdir()
            (workdir / "tls").mkdir()
            plain_rate = ingest_rate(plain, workdir / "plain", batches)
            tls_rate = ingest_rate(tls, workdir / "tls", batches)
        finally:
            plain_broker.close()
            tls_broker.close()
    return {
        "tls_ingest_ratio": tls_rate / plain_rate,
        "tls_ingest_per_s": tls_rate,
        "plain_ingest_per_s": plain_rate,
    }


def results(count: int, rounds: int, batches: int) -> dict[str, float]:
    """Every measurement of this bench by name; one broker serves both round trips."""
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        broker = MosquittoBroker(workdir=workdir / "broker")
        broker.start()
        try:
            plain = round_trip_ms(broker.port, workdir, count, signed=False)
            signed = round_trip_ms(broker.port, workdir, count, signed=True)
        finally:
            broker.close()
    return {
        "signed_cmd_ms": signed,
        "plain_cmd_ms": plain,
        "sign_verify_us": sign_verify_us(rounds),
        **tls_ingest(batches),
    }


def _line(values: dict[str, float], fmt: Callable[[float], str] = lambda v: f"{v:.3f}") -> str:
    return "RESULT " + " ".join(f"{name}={fmt(value)}" for name, value in values.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=200, help="round trips per mode")
    parser.add_argument("--rounds", type=int, default=500, help="sign+verify per sample")
    parser.add_argument("--batches", type=int, default=4000, help="detection batches per mode")
    args = parser.parse_args()
    print(_line(results(args.commands, args.rounds, args.batches)), flush=True)


if __name__ == "__main__":
    main()
