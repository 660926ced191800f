"""The ingest's MQTT receiver: packets cut from any split of the stream, hostile framing
refused, and real sessions on a real mosquitto that stay up on keepalive, come back after the
broker restarts, and get again what they had not acknowledged."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from controller.demo.waiting import wait_until
from controller.mqtt.receiver import (
    PUBLISH,
    Receiver,
    ReceiverEvents,
    Subscription,
    _remaining_length,
    _Session,
    _string,
    puback_packet,
)
from controller.settings import MqttSettings


class Recorder(ReceiverEvents):
    def __init__(self, filters: list[str]) -> None:
        self.filters = filters
        self.messages: list[tuple[int, str, bytes, int, int]] = []
        self.connects: list[tuple[int, bool]] = []
        self.granted: list[list[int]] = []
        self.disconnects: list[str] = []
        self.lock = threading.Lock()

    def connected(self, index: int, session_present: bool) -> Subscription:
        self.connects.append((index, session_present))
        return Subscription([], [(f, 1) for f in self.filters])

    def subscribed(self, index: int, granted: list[int]) -> None:
        self.granted.append(granted)

    def disconnected(self, index: int, reason: str) -> None:
        self.disconnects.append(reason)

    def message(self, index: int, topic: str, payload: bytes, qos: int, pid: int) -> None:
        with self.lock:
            self.messages.append((index, topic, payload, qos, pid))


class FakeTransport:
    def __init__(self) -> None:
        self.closed = False
        self.written = b""

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def write(self, data: bytes) -> None:
        self.written += data


def publish(topic: str, payload: bytes, qos: int, pid: int = 0) -> bytes:
    body = _string(topic) + (pid.to_bytes(2, "big") if qos else b"") + payload
    return bytes([PUBLISH | (qos << 1)]) + _remaining_length(len(body)) + body


@contextlib.contextmanager
def session_on(events: Recorder) -> Iterator[tuple[_Session, FakeTransport]]:
    owner = Receiver(MqttSettings(port=1), ["x"], events)
    try:
        session = _Session(owner, 0)
        transport = FakeTransport()
        session.transport = transport  # type: ignore[assignment]
        yield session, transport
    finally:
        owner.stop()  # never started: frees its event loop


def test_packets_are_cut_from_any_split_of_the_stream():
    packets = [
        publish("edgefleet/dev/a/det", b'{"n":1}', 1, 7),
        publish("edgefleet/dev/b/health", b"x" * 300, 0),  # a two-byte remaining length
        bytes([0xD0, 0]),  # PINGRESP
        publish("edgefleet/dev/c/evt", b"", 1, 65535),
    ]
    stream = b"".join(packets)
    expected = [
        (0, "edgefleet/dev/a/det", b'{"n":1}', 1, 7),
        (0, "edgefleet/dev/b/health", b"x" * 300, 0, 0),
        (0, "edgefleet/dev/c/evt", b"", 1, 65535),
    ]
    for cut in range(1, len(stream)):
        events = Recorder([])
        with session_on(events) as (session, transport):
            session.data_received(stream[:cut])
            session.data_received(stream[cut:])
            assert events.messages == expected, cut
            assert not transport.closed and not session.buffer
    events = Recorder([])
    with session_on(events) as (session, _):
        for byte in stream:  # one byte at a time
            session.data_received(bytes([byte]))
    assert events.messages == expected


@pytest.mark.parametrize(
    ("what", "data"),
    [
        ("a remaining length of five bytes", bytes([0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01])),
        ("a packet over the cap", bytes([0x30]) + _remaining_length(17 << 20)),
        ("a QoS 2 publish", bytes([0x34]) + _remaining_length(5) + _string("t") + b"\0\1"),
        ("a topic longer than its packet", bytes([0x30, 3, 0, 9, 0x61])),
        ("a topic that is not UTF-8", bytes([0x30, 4, 0, 2, 0xFF, 0xFE])),
        ("a packet type a receiver never gets", bytes([0x10, 0])),
    ],
)
def test_hostile_framing_closes_the_connection_and_delivers_nothing(what, data):
    events = Recorder([])
    with session_on(events) as (session, transport):
        session.data_received(data + publish("edgefleet/dev/a/det", b"{}", 0))
        assert transport.closed, what
        assert events.messages == [] and not session.buffer


def _publisher(port: int) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="receiver-test-pub")
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def test_sessions_keep_alive_reconnect_and_get_again_what_was_not_acknowledged(mosquitto):
    events = Recorder(["edgefleet/dev/+/det"])
    settings = MqttSettings(port=mosquitto.port, keepalive_s=5)
    receiver = Receiver(
        settings, ["recv-test-0"], events, reconnect_min_s=0.2, reconnect_max_s=0.5
    ).start()
    publisher = _publisher(mosquitto.port)
    try:
        wait_until("subscribed", lambda: events.granted == [[1]])
        publisher.publish("edgefleet/dev/a/det", b"one", qos=1).wait_for_publish(5)
        wait_until("the first message", lambda: len(events.messages) == 1)
        # past 1.5 keepalives with nothing to receive: our PINGREQs keep the session up
        time.sleep(8.0)
        assert events.disconnects == [] and events.connects == [(0, False)]
        # not acknowledged, then the broker restarts: the persistent session gets it again
        mosquitto.stop()
        mosquitto.start()
        wait_until("reconnected", lambda: len(events.connects) == 2, timeout=15)
        assert events.connects[1] == (0, True)
        wait_until("the message again", lambda: len(events.messages) == 2, timeout=10)
        first, again = events.messages
        assert again[1:4] == first[1:4] == ("edgefleet/dev/a/det", b"one", 1)
        # acknowledged now: after another restart nothing comes back
        receiver.ack([(0, again[4])])
        time.sleep(0.5)
        mosquitto.stop()
        mosquitto.start()
        wait_until("reconnected again", lambda: len(events.connects) == 3, timeout=15)
        publisher.reconnect()
        publisher.publish("edgefleet/dev/b/det", b"two", qos=1).wait_for_publish(5)
        wait_until("the next message", lambda: len(events.messages) == 3, timeout=10)
        assert events.messages[2][1:3] == ("edgefleet/dev/b/det", b"two")
    finally:
        publisher.loop_stop()
        publisher.disconnect()
        receiver.stop()


def test_a_refused_connection_is_retried_and_reported(mosquitto):
    events = Recorder(["edgefleet/dev/+/det"])
    mosquitto.stop()
    settings = MqttSettings(port=mosquitto.port)
    receiver = Receiver(settings, ["recv-test-1"], events, reconnect_min_s=0.1).start()
    try:
        wait_until("a failed attempt", lambda: len(events.disconnects) >= 1)
        assert events.connects == []
        mosquitto.start()
        wait_until("connected once the broker is up", lambda: events.granted == [[1]])
    finally:
        receiver.stop()


def test_acks_are_puback_packets():
    assert puback_packet(1) == b"\x40\x02\x00\x01"
    assert puback_packet(65535) == b"\x40\x02\xff\xff"
