"""The outbox: bounded, ordered, durable across restarts, drained through a real broker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.link.outbox import Outbox, OutboxPump, OutboxSettings


def test_messages_come_back_oldest_first_and_leave_only_when_deleted(tmp_path):
    box = Outbox(tmp_path / "o.sqlite")
    for i in range(5):
        box.put("t", f"m{i}".encode())
    first = box.oldest(3)
    assert [i.payload for i in first] == [b"m0", b"m1", b"m2"]
    # rows in flight are left out, the rest follow in order
    assert [i.payload for i in box.oldest(10, skip={first[0].row, first[1].row})] == [
        b"m2",
        b"m3",
        b"m4",
    ]
    box.delete([first[0].row, first[1].row])
    assert box.depth == 3
    assert box.size_bytes == 6
    box.delete([first[0].row])  # already gone: ignored
    assert box.depth == 3


def test_full_outbox_drops_oldest_by_rows_and_by_bytes_and_counts_it(tmp_path):
    box = Outbox(tmp_path / "o.sqlite", OutboxSettings(max_rows=3, max_bytes=1 << 20))
    for i in range(5):
        box.put("t", f"m{i}".encode())
    assert [i.payload for i in box.oldest(10)] == [b"m2", b"m3", b"m4"]
    assert box.dropped == 2

    sized = Outbox(tmp_path / "s.sqlite", OutboxSettings(max_rows=100, max_bytes=2048))
    for i in range(5):
        sized.put("t", bytes([i]) * 1000)
    assert sized.size_bytes <= 2048
    assert [i.payload[0] for i in sized.oldest(10)] == [3, 4]
    assert sized.dropped == 3


def test_old_messages_expire(tmp_path):
    now = [1000.0]
    box = Outbox(tmp_path / "o.sqlite", OutboxSettings(max_age_s=60), clock=lambda: now[0])
    box.put("t", b"old")
    now[0] += 30
    box.put("t", b"young")
    now[0] += 45
    assert [i.payload for i in box.oldest(10)] == [b"young"]
    assert box.dropped == 1


def test_depth_dropped_and_journal_survive_a_restart(tmp_path):
    settings = OutboxSettings(max_rows=2, journal=True)
    box = Outbox(tmp_path / "o.sqlite", settings)
    for i in range(3):
        box.put("t", f"m{i}".encode(), [f"id-{i}"])
    box.close()
    again = Outbox(tmp_path / "o.sqlite", settings)
    assert again.depth == 2 and again.dropped == 1
    assert [i.payload for i in again.oldest(10)] == [b"m1", b"m2"]
    assert again.journal_ids() == ["id-0", "id-1", "id-2"]


_WRITER = """
import sys
from agent.link.outbox import Outbox
box = Outbox(sys.argv[1])
i = 0
while True:
    box.put("t", str(i).encode())
    i += 1
    if i == 200:
        print("ready", flush=True)
"""


def test_a_killed_writer_leaves_a_consistent_ordered_outbox(tmp_path):
    path = tmp_path / "o.sqlite"
    with subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path)],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    ) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == b"ready"
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
    box = Outbox(path)
    values = [int(i.payload) for i in box.oldest(box.depth)]
    box.close()
    assert len(values) >= 200 and len(values) == box.depth
    assert values == list(range(len(values)))  # every committed put, in order, no gaps


class Receiver:
    """A subscriber on the real broker recording what arrives, in order."""

    def __init__(self, port: int, topic: str) -> None:
        self.got: list[bytes] = []
        self.cond = threading.Condition()
        # a persistent session: the broker keeps its subscription and messages over a restart
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="outbox-receiver", clean_session=False
        )
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)
        self.client.on_message = self._on_message
        self.subscribed = threading.Event()
        self.client.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
        self.client.on_disconnect = lambda *a: self.subscribed.clear()
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.subscribed.wait(10)

    def _on_message(self, client, userdata, msg) -> None:
        with self.cond:
            self.got.append(msg.payload)
            self.cond.notify_all()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[bytes]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(set(self.got)) >= count, timeout), self.got
            return list(self.got)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_pump_drains_in_order_through_the_broker_with_a_bounded_window(tmp_path, mosquitto):
    receiver = Receiver(mosquitto.port, "ob/#")
    box = Outbox(tmp_path / "o.sqlite", OutboxSettings(max_inflight=3))
    connected = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="outbox-sender")
    client.on_connect = lambda *a: connected.set()
    client.on_disconnect = lambda *a: connected.clear()
    peak = [0]
    pump: OutboxPump

    def publish(topic: str, payload: bytes) -> int:
        peak[0] = max(peak[0], pump.inflight + 1)
        return int(client.publish(topic, payload, qos=1).mid)

    pump = OutboxPump(box, publish, connected)
    client.on_publish = lambda c, u, mid, rc, p: pump.acked(mid)
    for i in range(50):
        box.put("ob/x", f"{i:03d}".encode())
    pump.start()
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()
    try:
        got = receiver.wait_for(50)
        assert pump.flush(timeout=10)
        assert got == [f"{i:03d}".encode() for i in range(50)]
        assert box.depth == 0 and pump.acknowledged == 50
        assert peak[0] <= 3
    finally:
        pump.stop()
        client.loop_stop()
        client.disconnect()
        receiver.close()


def test_pump_keeps_messages_while_the_broker_is_down_and_sends_them_after(tmp_path, mosquitto):
    box = Outbox(tmp_path / "o.sqlite")
    connected, down, up = threading.Event(), threading.Event(), threading.Event()
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id="outbox-sender-2", clean_session=False
    )

    # the pump sees "connected" only once the receiver listens again, so nothing is published
    # into a broker that has no subscriber yet
    def on_connect(*args) -> None:
        down.clear()
        up.set()

    def on_disconnect(*args) -> None:
        up.clear()
        connected.clear()
        down.set()

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.reconnect_delay_set(min_delay=1, max_delay=1)
    pump = OutboxPump(box, lambda t, p: int(client.publish(t, p, qos=1).mid), connected)
    client.on_publish = lambda c, u, mid, rc, p: pump.acked(mid)
    receiver = Receiver(mosquitto.port, "ob/#")
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()
    pump.start()
    try:
        assert up.wait(10)
        mosquitto.stop()
        assert down.wait(10)
        for i in range(20):
            box.put("ob/y", f"{i}".encode())
        assert not pump.flush(timeout=0.5)  # nowhere to go: kept
        assert box.depth == 20
        mosquitto.start()
        assert up.wait(10) and receiver.subscribed.wait(10)
        connected.set()
        assert pump.flush(timeout=15)
        got = receiver.wait_for(20)
        assert sorted(set(got), key=int) == [f"{i}".encode() for i in range(20)]
    finally:
        pump.stop()
        client.loop_stop()
        client.disconnect()
        receiver.close()


@pytest.mark.parametrize("rows", [0, 1])
def test_flush_of_an_empty_or_unsendable_outbox_returns(tmp_path, rows):
    box = Outbox(tmp_path / "o.sqlite")
    connected = threading.Event()
    connected.set()

    def refuse(topic: str, payload: bytes) -> int:
        raise ValueError("payload too large")

    pump = OutboxPump(box, refuse, connected)
    for _ in range(rows):
        box.put("t", b"x")
    pump.start()
    try:
        assert pump.flush(timeout=5)
    finally:
        pump.stop()
