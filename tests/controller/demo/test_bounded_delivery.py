"""Delivery at fleet size: the broker holds a window of chunks per slow reader, not the bundle,
and a paced pass goes out no faster than its rate."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from controller.bundles.chunks import ChunkServer
from controller.bundles.repository import BundleRepository
from controller.db import make_engine, session_factory, upgrade_database
from controller.demo.broker import DELIVERY_LIMITS, MosquittoBroker
from controller.mqtt.session import Publisher
from controller.settings import MqttSettings
from protocol.codec import decode_chunk, encode_chunk
from protocol.topics import Topics

CHUNK = 64 * 1024


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def _stalled_readers(port: int, count: int, topic: str) -> list[mqtt.Client]:
    """Subscribers that never read again once subscribed: the slowest links there are."""
    readers = []
    for i in range(count):
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"stalled-{i}")
        client.connect("127.0.0.1", port)
        client.subscribe(topic, qos=1)
        for _ in range(20):  # CONNECT, SUBSCRIBE out; CONNACK, SUBACK in; then no more reads
            client.loop(0.05)
        readers.append(client)
    return readers


def _flood(port: int, topic: str, chunks: int) -> None:
    publisher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="flood")
    publisher.connect("127.0.0.1", port)
    publisher.loop_start()
    try:
        data = os.urandom(CHUNK)
        infos = [
            publisher.publish(topic, encode_chunk(i, chunks, data), qos=1) for i in range(chunks)
        ]
        for info in infos:
            info.wait_for_publish(30)
    finally:
        publisher.disconnect()
        publisher.loop_stop()


def _peak_with(tmp_path: Path, extra: str) -> float:
    """Peak broker RSS, MB, after a 10 MB bundle went to 12 readers that stopped reading."""
    broker = MosquittoBroker(workdir=tmp_path, extra_config=extra)
    topic = Topics().bundle_chunks("ab" * 32)
    with broker:
        assert broker._proc is not None
        readers = _stalled_readers(broker.port, 12, topic)
        try:
            _flood(broker.port, topic, 160)
            time.sleep(0.5)
            return _peak_rss_mb(broker._proc.pid)
        finally:
            for reader in readers:
                sock = reader.socket()
                if sock is not None:
                    sock.close()


def test_slow_readers_cost_the_broker_a_window_not_the_bundle(tmp_path):
    """Bounded, the broker stays small; without the byte limits (the old configuration) it
    holds a copy per reader. Both are measured here, so the test shows the bound at work."""
    bounded = _peak_with(tmp_path / "bounded", "")
    unbounded = _peak_with(tmp_path / "unbounded", "max_inflight_bytes 0\nmax_queued_bytes 0")
    limit = next(int(line.split()[1]) for line in DELIVERY_LIMITS if "max_queued_bytes" in line)
    window_mb = 12 * (limit + 262144) / 1e6  # queued plus in flight, per reader
    assert bounded < window_mb + 15, f"{bounded:.0f} MB against a window of {window_mb:.0f} MB"
    assert unbounded > bounded + 30, f"{unbounded:.0f} MB against {bounded:.0f} MB"


def test_the_demo_broker_and_its_config_carry_the_limits(tmp_path):
    broker = MosquittoBroker(workdir=tmp_path / "broker")
    broker.write_config()
    text = broker.config_path.read_text()
    for line in DELIVERY_LIMITS:
        assert line in text.splitlines()
    assert any(line.startswith("max_queued_bytes") for line in DELIVERY_LIMITS)


def test_a_paced_pass_goes_no_faster_than_its_rate(tmp_path, mosquitto, make_bundle):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    upgrade_database(url)
    engine = make_engine(url)
    built = make_bundle(model_bytes=400_000)
    store = BundleRepository(
        tmp_path / "bundles", session_factory(engine), lambda path: _manifest(built), 16 * 1024
    )
    info = store.add_file(built.path)
    got: list[int] = []
    done = threading.Event()
    reader = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="paced-reader")
    subscribed = threading.Event()

    def on_message(_c, _u, msg):
        got.append(decode_chunk(msg.payload).index)
        if len(got) == info.chunks:
            done.set()

    reader.on_message = on_message
    reader.on_subscribe = lambda *_: subscribed.set()
    reader.connect("127.0.0.1", mosquitto.port)
    reader.subscribe(Topics().bundle_chunks(info.digest), qos=1)
    reader.loop_start()
    publisher = Publisher(MqttSettings(port=mosquitto.port), 20, "paced-pub").start()
    chunks = ChunkServer(publisher, store, Topics(), 0.0, send_rate=1_000_000).start()
    try:
        assert subscribed.wait(10) and publisher.wait_ready(10)
        start = time.monotonic()
        chunks.request(info, [(0, info.chunks - 1)])
        assert done.wait(30)
        took = time.monotonic() - start
    finally:
        chunks.stop()
        publisher.stop()
        reader.loop_stop()
        reader.disconnect()
        engine.dispose()
    assert sorted(got) == list(range(info.chunks))
    # the last chunk may leave once (chunks - 1) chunks' worth of time has passed
    assert took >= (info.chunks - 1) * 16 * 1024 / 1_000_000 * 0.9


def _manifest(built):
    return built.manifest
