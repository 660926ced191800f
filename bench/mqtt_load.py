"""A compact asyncio MQTT 3.1.1 client for load: thousands of simulated devices per process,
and a subscriber that only counts (the raw-drain baseline).

paho runs a thread per client, which does not scale to 10,000 connections; here one event loop
holds them all. Only what the benchmark needs is spoken: CONNECT/CONNACK, PUBLISH at QoS 0 and 1
with PUBACK, SUBSCRIBE/SUBACK. Payloads are real wire messages built with `protocol/` once per
device and re-stamped (ids, time) per send; a sample is decoded with the controller's own
decoder before any is sent.
"""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing.synchronize
import os
import struct
import time
from dataclasses import dataclass, field
from multiprocessing.queues import Queue
from typing import Any

from protocol.codec import decode_agent_message, encode
from protocol.messages import Box, Detection, DetectionBatch, Health
from protocol.topics import Channel, Topics

CONNACK, PUBLISH, PUBACK, SUBACK = 0x20, 0x30, 0x40, 0x90
TICKS_PER_S = 20
HEALTH_EVERY_S = 10
_MARK_ID, _MARK_DET, _MARK_TS = "a" * 32, "b" * 32, 1234567890.125


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _utf8(text: str) -> bytes:
    raw = text.encode()
    return struct.pack(">H", len(raw)) + raw


def connect_packet(client_id: str, clean: bool = True, keepalive: int = 0) -> bytes:
    body = _utf8("MQTT") + bytes([4, 0x02 if clean else 0]) + struct.pack(">H", keepalive)
    body += _utf8(client_id)
    return bytes([0x10]) + _remaining_length(len(body)) + body


def publish_packet(topic: str | bytes, payload: bytes, qos: int, pid: int = 0) -> bytes:
    head = _utf8(topic) if isinstance(topic, str) else topic
    body = head + (struct.pack(">H", pid) if qos else b"") + payload
    return bytes([PUBLISH | (qos << 1)]) + _remaining_length(len(body)) + body


def subscribe_packet(pid: int, filters: list[str], qos: int) -> bytes:
    body = struct.pack(">H", pid) + b"".join(_utf8(f) + bytes([qos]) for f in filters)
    return bytes([0x82]) + _remaining_length(len(body)) + body


class _Stream(asyncio.Protocol):
    """Splits the byte stream into MQTT packets and hands each to `packet`."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.connected: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if not self.connected.done():
            self.connected.set_result(False)

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        while len(buf) >= 2:
            length, shift, pos = 0, 0, 1
            while True:
                if pos >= len(buf):
                    return
                byte = buf[pos]
                length |= (byte & 0x7F) << shift
                pos += 1
                if not byte & 0x80:
                    break
                shift += 7
            if len(buf) < pos + length:
                return
            self.packet(buf[0], bytes(buf[pos : pos + length]))
            del buf[: pos + length]

    def packet(self, first: int, body: bytes) -> None:
        if first & 0xF0 == CONNACK and not self.connected.done():
            self.connected.set_result(body[1] == 0)


@dataclass
class FleetCounts:
    det_sent: int = 0
    det_acked: int = 0
    health_sent: int = 0
    connected: int = 0
    connect_failures: int = 0
    disconnects: int = 0
    first_send: float = 0.0
    last_send: float = 0.0


class _Device(_Stream):
    def __init__(self, counts: FleetCounts) -> None:
        super().__init__()
        self.counts = counts
        self.pids = itertools.cycle(range(1, 65536))

    def packet(self, first: int, body: bytes) -> None:
        if first & 0xF0 == PUBACK:
            self.counts.det_acked += 1
        else:
            super().packet(first, body)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.connected.done() and self.connected.result():
            self.counts.disconnects += 1
        super().connection_lost(exc)


def _template(message: Any) -> str:
    """The message's JSON as a format string with {0} id, {1} detection id, {2} time."""
    text = encode(message).decode()
    text = text.replace("{", "{{").replace("}", "}}")
    return text.replace(_MARK_ID, "{0}").replace(_MARK_DET, "{1}").replace(repr(_MARK_TS), "{2}")


@dataclass
class DeviceMessages:
    """Wire messages for one device, re-stamped per send."""

    device: str
    topics: Topics
    det_topic: bytes = b""
    health_topic: bytes = b""
    det: str = ""
    health: str = ""
    serial: itertools.count[int] = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        self.det_topic = _utf8(self.topics.device(self.device, Channel.DET))
        self.health_topic = _utf8(self.topics.device(self.device, Channel.HEALTH))
        box = Box(x1=0.1, y1=0.2, x2=0.3, y2=0.4)
        det = Detection(id=_MARK_DET, camera="cam0", label="face", score=0.9, box=box, ts=_MARK_TS)
        self.det = _template(
            DetectionBatch(
                id=_MARK_ID,
                ts=_MARK_TS,
                device=self.device,
                model="bench@1",
                runtime="litert",
                detections=(det,),
            )
        )
        self.health = _template(
            Health(id=_MARK_ID, ts=_MARK_TS, device=self.device, cpu_percent=12.5)
        )

    # Ids lead with the send time in milliseconds, as the agent's do (protocol.messages.new_id
    # is a UUIDv7), so they sort by time; the device and a serial keep them unique and readable.

    def next_det(self, now: float) -> bytes:
        n = next(self.serial)
        tag = f"{int(now * 1000):012x}-{self.device}-{n:010d}"
        return self.det.format(f"{tag}-m", f"{tag}-d", repr(now)).encode()

    def next_health(self, now: float) -> bytes:
        n = next(self.serial)
        tag = f"{int(now * 1000):012x}-{self.device}-{n:010d}"
        return self.health.format(f"{tag}-h", "", repr(now)).encode()


def check_messages(topics: Topics) -> None:
    """Decode one of each with the controller's decoder; raises ProtocolError if invalid."""
    msgs = DeviceMessages("bench-check", topics)
    now = time.time()
    decode_agent_message(topics, topics.device("bench-check", Channel.DET), msgs.next_det(now))
    decode_agent_message(
        topics, topics.device("bench-check", Channel.HEALTH), msgs.next_health(now)
    )


async def _connect(
    host: str, port: int, client_id: str, protocol: _Stream, sem: asyncio.Semaphore
) -> bool:
    loop = asyncio.get_running_loop()
    async with sem:
        for attempt in range(5):
            try:
                await loop.create_connection(lambda: protocol, host, port)
                assert protocol.transport is not None
                protocol.transport.write(connect_packet(client_id))
                if await asyncio.wait_for(protocol.connected, 20):
                    return True
            except (OSError, asyncio.TimeoutError):
                await asyncio.sleep(0.2 * (attempt + 1))
        return False


async def _fleet(
    host: str,
    port: int,
    prefix: str,
    devices: list[str],
    sending: multiprocessing.synchronize.Event,
    stop: multiprocessing.synchronize.Event,
    ready: Queue[Any],
) -> FleetCounts:
    counts = FleetCounts()
    topics = Topics(prefix)
    sem = asyncio.Semaphore(256)
    conns = [_Device(counts) for _ in devices]
    msgs = [DeviceMessages(d, topics) for d in devices]
    results = await asyncio.gather(
        *(_connect(host, port, d, c, sem) for d, c in zip(devices, conns, strict=True))
    )
    counts.connected = sum(results)
    counts.connect_failures = len(results) - counts.connected
    ready.put(("connected", os.getpid(), counts.connected))
    tick = 0
    start = time.monotonic()
    was_sending = False
    while not stop.is_set():
        tick += 1
        delay = start + tick / TICKS_PER_S - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if not sending.is_set():
            was_sending = False
            continue
        if not was_sending:
            # a new phase counts from zero (the previous one's acknowledgements are long in)
            was_sending = True
            counts.det_sent = counts.det_acked = counts.health_sent = 0
            counts.first_send = 0.0
        now = time.time()
        det_slot = tick % TICKS_PER_S
        health_slot = tick % (TICKS_PER_S * HEALTH_EVERY_S)
        for i in range(det_slot, len(conns), TICKS_PER_S):
            conn = conns[i]
            if conn.lost or conn.transport is None:
                continue
            m = msgs[i]
            conn.transport.write(publish_packet(m.det_topic, m.next_det(now), 1, next(conn.pids)))
            counts.det_sent += 1
        for i in range(health_slot, len(conns), TICKS_PER_S * HEALTH_EVERY_S):
            conn = conns[i]
            if conn.lost or conn.transport is None:
                continue
            m = msgs[i]
            conn.transport.write(publish_packet(m.health_topic, m.next_health(now), 0))
            counts.health_sent += 1
        counts.first_send = counts.first_send or now
        counts.last_send = now
    # every PUBACK owed, or 15 s
    deadline = time.monotonic() + 15
    while counts.det_acked < counts.det_sent and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    for conn in conns:
        if conn.transport is not None:
            conn.transport.close()
    await asyncio.sleep(0.2)
    return counts


def run_fleet(
    host: str,
    port: int,
    prefix: str,
    devices: list[str],
    sending: multiprocessing.synchronize.Event,
    stop: multiprocessing.synchronize.Event,
    results: Queue[Any],
) -> None:
    """A process's share of the devices; puts ("connected", pid, n) then ("fleet", counts)."""
    counts = asyncio.run(_fleet(host, port, prefix, devices, sending, stop, results))
    results.put(("fleet", counts))


class _Counter(_Stream):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def packet(self, first: int, body: bytes) -> None:
        kind = first & 0xF0
        if kind == PUBLISH:
            self.count += 1
            qos = (first >> 1) & 3
            if qos:
                topic_len = struct.unpack_from(">H", body)[0]
                pid = body[2 + topic_len : 4 + topic_len]
                assert self.transport is not None
                self.transport.write(bytes([PUBACK, 2]) + pid)
        elif kind == SUBACK:
            pass
        else:
            super().packet(first, body)


async def _drain(
    host: str, port: int, prefix: str, seconds: float, ready: Queue[Any]
) -> tuple[int, float]:
    counter = _Counter()
    if not await _connect(host, port, "bench-raw-drain", counter, asyncio.Semaphore(1)):
        raise RuntimeError("the raw-drain subscriber could not connect")
    assert counter.transport is not None
    counter.transport.write(subscribe_packet(1, [f"{prefix}/dev/+/+"], 1))
    await asyncio.sleep(0.5)
    ready.put(("drain_ready", os.getpid(), 0))
    base = counter.count
    started = time.monotonic()
    await asyncio.sleep(seconds)
    count = counter.count - base
    elapsed = time.monotonic() - started
    counter.transport.close()
    return count, elapsed


def run_drain(host: str, port: int, prefix: str, seconds: float, results: Queue[Any]) -> None:
    """The raw-drain baseline: puts ("drain", messages, seconds)."""
    count, elapsed = asyncio.run(_drain(host, port, prefix, seconds, results))
    results.put(("drain", count, elapsed))
