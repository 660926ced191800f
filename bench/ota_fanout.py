"""Bundle fan-out over MQTT: one signed bundle to many agents' receivers through one mosquitto.

Each receiver speaks the agent's protocol: subscribe to the bundle's chunk topic, ask for the
chunks it lacks with `chunk_request` events, store chunks in a `ChunkAssembler`, ask again for
what is still missing when chunks stop coming, and at the end check the digest and verify the
signed bundle with `ota.verify`. The controller side is the real `ChunkServer` and `Publisher`
over a real `BundleRepository`, fed by an MQTT subscriber to the agents' event topics (as the ingest
does). The baseline is what unicast would cost: agents × bundle bytes, and one agent's time.
Prints one `RESULT` line; exits 1 when an agent did not finish in time.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import shutil
import sys
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from controller.bundles.chunks import ChunkServer
from controller.bundles.repository import BundleInfo, BundleRepository, release_verifier
from controller.db import make_engine, session_factory, upgrade_database
from controller.demo.broker import MosquittoBroker
from controller.mqtt.session import Publisher
from controller.settings import MqttSettings
from ota.build import BuiltBundle, BundleSpec, VariantSource, build_bundle
from ota.errors import BundleRefused
from ota.keys import SigningKey
from ota.manifest import InputSpec, PostprocessSpec
from ota.transfer import ChunkAssembler, Offer, TransferError
from ota.trust import TrustStore
from ota.trust_file import load_trust_store, save_trust_store
from ota.verify import verify_bundle
from protocol.codec import decode_agent_message, decode_chunk, encode
from protocol.errors import ProtocolError
from protocol.events import EventKind
from protocol.messages import ChunkRange, Event
from protocol.topics import Topics

TOPICS = Topics()


def build_signed_bundle(workdir: Path, megabytes: int, key: SigningKey) -> BuiltBundle:
    """A real signed bundle whose variants carry `megabytes` MB of random model bytes."""
    src = workdir / "src"
    src.mkdir()
    half = megabytes * 1_000_000 // 2
    (src / "model.tflite").write_bytes(os.urandom(half))
    (src / "model.onnx").write_bytes(os.urandom(megabytes * 1_000_000 - half))
    spec = BundleSpec(
        name="fanout",
        version=1,
        labels=("face",),
        input=InputSpec(width=128, height=128),
        postprocess=PostprocessSpec(kind="blazeface"),
        variants=(
            VariantSource(runtime="litert", model="model.tflite"),
            VariantSource(runtime="onnx", model="model.onnx"),
        ),
    )
    return build_bundle(spec, src, [key], workdir / "fanout.bundle", datetime.now(timezone.utc))


class Receiver:
    """One agent's receiving end: paho client, chunk assembler, chunk_request loop, verifier."""

    def __init__(
        self,
        name: str,
        port: int,
        info: BundleInfo,
        directory: Path,
        trust: TrustStore,
        drop_rate: float,
        seed: int,
        done: threading.Condition,
    ) -> None:
        self.device = name
        self.info = info
        self.trust = trust
        self.drop_rate = drop_rate
        self.rng = random.Random(seed)
        self.done = done
        self.lock = threading.Lock()
        self.assembler = ChunkAssembler(
            directory, Offer(info.digest, info.size, info.chunk_size, info.chunks)
        )
        self.subscribed = threading.Event()
        self.last_progress = time.monotonic()
        self.requests = 0
        self.dropped = 0
        self.verified = False
        self.finished_at = 0.0
        self.error = ""
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, 30)
        self.client.loop_start()

    @property
    def finished(self) -> bool:
        return self.verified or bool(self.error)

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, _r: Any, _p: Any) -> None:
        client.subscribe(TOPICS.bundle_chunks(self.info.digest), qos=1)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        chunk = decode_chunk(msg.payload)
        if self.drop_rate and self.rng.random() < self.drop_rate:
            self.dropped += 1  # lost on the way in, as on a bad link
            return
        with self.lock:
            if self.finished or not self.assembler.add(chunk.index, chunk.total, chunk.data):
                return
            self.last_progress = time.monotonic()
            if not self.assembler.complete:
                return
        self._verify()

    def _verify(self) -> None:
        try:
            path = self.assembler.finish()
            with path.open("rb") as stream:
                verify_bundle(stream, self.trust, datetime.now(timezone.utc))
            self.verified = True
        except (TransferError, BundleRefused, OSError) as exc:
            self.error = str(exc)
        self.finished_at = time.monotonic()
        with self.done:
            self.done.notify_all()

    def request_missing(self) -> None:
        with self.lock:
            if self.finished:
                return
            ranges = self.assembler.missing_ranges()
            self.requests += 1
            self.last_progress = time.monotonic()
        event = Event(
            device=self.device,
            kind=EventKind.CHUNK_REQUEST,
            bundle=self.info.digest,
            missing=tuple(ChunkRange(start=a, end=b) for a, b in ranges),
        )
        self.client.publish(TOPICS.evt(self.device), encode(event), qos=1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class RequestRouter:
    """The controller's ingest, reduced to chunk requests: evt topic → ChunkServer.request."""

    def __init__(self, port: int, chunks: ChunkServer, info: BundleInfo) -> None:
        self.chunks = chunks
        self.info = info
        self.requests = 0
        self.ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-controller-ingest")
        self.client.on_connect = lambda c, *_: c.subscribe(f"{TOPICS.prefix}/dev/+/evt", qos=1)
        self.client.on_subscribe = lambda *_: self.ready.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, 30)
        self.client.loop_start()

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            _, event = decode_agent_message(TOPICS, msg.topic, msg.payload)
        except ProtocolError:
            return
        if isinstance(event, Event) and event.kind == "chunk_request":
            self.requests += 1
            self.chunks.request(self.info, [(r.start, r.end) for r in event.missing])

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class WorkerReport:
    complete: int
    dropped: int
    requests: int
    finished_at: float
    errors: list[str]


def run_receivers(
    names: list[str],
    port: int,
    info: BundleInfo,
    trust_path: Path,
    workdir: Path,
    drop_rate: float,
    retry_s: float,
    timeout_s: float,
    go: Any,
    reports: Any,
) -> None:
    """One worker process's share of the agents: receive until all verified or the deadline."""
    trust = load_trust_store(trust_path)
    done = threading.Condition()
    receivers = [
        Receiver(
            name, port, info, workdir / name, trust, drop_rate, zlib.crc32(name.encode()), done
        )
        for name in names
    ]
    try:
        ready = all(r.subscribed.wait(30) for r in receivers)
        reports.put(("ready", ready))
        if not ready or not go.wait(60):
            return
        deadline = time.monotonic() + timeout_s
        for receiver in receivers:
            receiver.request_missing()
        with done:
            while time.monotonic() < deadline and not all(r.finished for r in receivers):
                done.wait(0.2)
                now = time.monotonic()
                for receiver in receivers:
                    # the agent's rule (Deployer.tick): ask again after chunks stopped coming
                    # for retry_s, doubling per request up to 8 times
                    wait = retry_s * min(8, 2**receiver.requests)
                    if not receiver.finished and now - receiver.last_progress >= wait:
                        receiver.request_missing()
        reports.put(
            (
                "report",
                WorkerReport(
                    complete=sum(r.verified for r in receivers),
                    dropped=sum(r.dropped for r in receivers),
                    requests=sum(r.requests for r in receivers),
                    finished_at=max((r.finished_at for r in receivers), default=0.0),
                    errors=[f"{r.device}: {r.error}" for r in receivers if r.error][:3],
                ),
            )
        )
    finally:
        for receiver in receivers:
            receiver.close()


@dataclass
class RunResult:
    seconds: float
    complete: int
    bytes_sent: int
    passes: int
    requests: int
    dropped: int


def deliver(
    *,
    port: int,
    store: BundleRepository,
    info: BundleInfo,
    trust_path: Path,
    workdir: Path,
    agents: int,
    processes: int,
    drop_rate: float,
    coalesce_s: float,
    retry_s: float,
    timeout_s: float,
    label: str,
) -> RunResult:
    """Deliver `info` to `agents` receivers at once; returns when all verified or at timeout.

    The receivers live in several processes, as agents live on several devices: one Python
    process holding them all would starve some of them and make them ask again needlessly.
    """
    ctx = multiprocessing.get_context("spawn")
    go, reports = ctx.Event(), ctx.Queue()
    names = [f"bench-{label}-{i:03d}" for i in range(agents)]
    workers = [
        ctx.Process(
            target=run_receivers,
            args=(
                names[k::processes],
                port,
                info,
                trust_path,
                workdir / label,
                drop_rate,
                retry_s,
                timeout_s,
                go,
                reports,
            ),
            daemon=True,
        )
        for k in range(min(processes, agents))
    ]
    publisher = Publisher(MqttSettings(port=port), 20, f"bench-controller-pub-{label}").start()
    publisher.wait_ready(10)
    chunks = ChunkServer(publisher, store, TOPICS, coalesce_s).start()
    router = RequestRouter(port, chunks, info)
    router.ready.wait(10)
    try:
        for worker in workers:
            worker.start()
        for _ in workers:
            kind, ready = reports.get(timeout=120)
            if kind != "ready" or not ready:
                raise RuntimeError("a worker's receivers could not subscribe")
        start = time.monotonic()
        go.set()
        found: list[WorkerReport] = [reports.get(timeout=timeout_s + 60)[1] for _ in workers]
        for report in found:
            for error in report.errors:
                print(f"# failed: {error}", file=sys.stderr)
        complete = sum(r.complete for r in found)
        end = max(r.finished_at for r in found) if complete == agents else time.monotonic()
        return RunResult(
            seconds=end - start,
            complete=complete,
            bytes_sent=chunks.bytes_sent,
            passes=chunks.passes,
            requests=router.requests,
            dropped=sum(r.dropped for r in found),
        )
    finally:
        for worker in workers:
            worker.join(30)
            if worker.is_alive():
                worker.kill()
        router.close()
        chunks.stop()
        publisher.stop()
        shutil.rmtree(workdir / label, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--megabytes", type=int, default=20)
    parser.add_argument("--chunk-kib", type=int, default=64)
    parser.add_argument("--drop", type=float, default=0.10, help="chunk loss rate, second run")
    parser.add_argument("--coalesce", type=float, default=0.25, help="seconds per window")
    parser.add_argument(
        "--retry",
        type=float,
        default=1.0,
        help="the agent's chunk_request_timeout_s (default 5; smaller keeps the lossy run short)",
    )
    parser.add_argument("--processes", type=int, default=4, help="receiver processes")
    parser.add_argument("--timeout", type=float, default=180.0, help="per run, seconds")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="edgefleet-fanout-"))
    broker = MosquittoBroker(workdir=workdir / "broker").start()
    try:
        key = SigningKey.generate()
        trust = TrustStore.from_keys([key.public_key()])
        save_trust_store(trust, workdir / "trust.json")
        bundle = build_signed_bundle(workdir, args.megabytes, key)
        url = f"sqlite:///{workdir / 'controller.db'}"
        upgrade_database(url)
        engine = make_engine(url)
        store = BundleRepository(
            workdir / "bundles",
            session_factory(engine),
            release_verifier(workdir / "trust.json", 1 << 30),
            args.chunk_kib * 1024,
        )
        info = store.add_file(bundle.path)
        common: dict[str, Any] = dict(
            port=broker.port,
            store=store,
            info=info,
            trust_path=workdir / "trust.json",
            workdir=workdir,
            processes=args.processes,
            coalesce_s=args.coalesce,
            retry_s=args.retry,
            timeout_s=args.timeout,
        )
        one = deliver(agents=1, drop_rate=0.0, label="one", **common)
        clean = deliver(agents=args.agents, drop_rate=0.0, label="clean", **common)
        lossy = deliver(agents=args.agents, drop_rate=args.drop, label="lossy", **common)
        engine.dispose()
    finally:
        broker.close()
        shutil.rmtree(workdir, ignore_errors=True)

    for name, run in (("one", one), ("clean", clean), ("lossy", lossy)):
        print(
            f"# {name}: {run.complete} verified in {run.seconds:.2f}s, "
            f"{run.bytes_sent} bytes sent in {run.passes} passes, {run.requests} requests, "
            f"{run.dropped} chunks dropped by receivers"
        )
    size = info.size
    print(
        f"RESULT agents={args.agents} seconds={clean.seconds:.2f} "
        f"controller_bytes_sent={clean.bytes_sent} bundle_bytes={size} "
        f"complete={clean.complete} ratio={clean.bytes_sent / size:.3f} "
        f"unicast_bytes={size * args.agents} seconds_one_agent={one.seconds:.2f} "
        f"drop_rate={args.drop} seconds_lossy={lossy.seconds:.2f} "
        f"controller_bytes_sent_lossy={lossy.bytes_sent} complete_lossy={lossy.complete} "
        f"ratio_lossy={lossy.bytes_sent / size:.3f}"
    )
    return 0 if clean.complete == lossy.complete == args.agents and one.complete == 1 else 1


if __name__ == "__main__":
    sys.exit(main())
