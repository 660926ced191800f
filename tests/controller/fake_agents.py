"""Test doubles made of real parts: an agent that is a real paho client."""

from __future__ import annotations

import queue
import socket
import threading
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import BaseModel

from controller.mqtt.session import close_client
from protocol.codec import Chunk, decode_chunk, decode_command, encode
from protocol.events import DeviceStatus, EventKind
from protocol.messages import ChunkRange, Command, Event, State
from protocol.topics import DEFAULT_PREFIX, Topics


class FakeAgent:
    """Speaks the agent's side of the wire contract over a real MQTT connection."""

    def __init__(self, host: str, port: int, device: str, prefix: str = DEFAULT_PREFIX) -> None:
        self.device = device
        self.topics = Topics(prefix)
        self.commands: queue.Queue[Command] = queue.Queue()
        self.chunks: queue.Queue[Chunk] = queue.Queue()
        self._subacks: dict[int, threading.Event] = {}
        self._connected = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"agent-{device}",
            protocol=mqtt.MQTTv311,
            reconnect_on_failure=False,
        )
        will = encode(State(device=device, status=DeviceStatus.OFFLINE))
        self.client.will_set(self.topics.state(device), will, qos=1, retain=True)
        self.client.on_connect = lambda *_: self._connected.set()
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.loop_start()
        assert self._connected.wait(5), "fake agent could not connect"

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, _codes: Any, _p: Any) -> None:
        self._subacks.setdefault(mid, threading.Event()).set()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic.endswith("/chunk"):
            self.chunks.put(decode_chunk(msg.payload))
        else:
            self.commands.put(decode_command(msg.payload))

    def subscribe(self, topic: str) -> None:
        """Subscribe at QoS 1 and return once the broker confirmed it."""
        _rc, mid = self.client.subscribe(topic, qos=1)
        assert mid is not None
        done = self._subacks.setdefault(mid, threading.Event())
        assert done.wait(5), f"no SUBACK for {topic}"

    def publish_raw(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(5)

    def send(self, message: BaseModel, channel: str, retain: bool = False) -> None:
        topic = f"{self.topics.prefix}/dev/{self.device}/{channel}"
        self.publish_raw(topic, encode(message), retain=retain)

    def online(self, **fields: Any) -> None:
        self.send(
            State(device=self.device, status=DeviceStatus.ONLINE, **fields), "state", retain=True
        )

    def request_chunks(self, digest: str, *ranges: tuple[int, int]) -> None:
        missing = tuple(ChunkRange(start=a, end=b) for a, b in ranges)
        self.send(
            Event(device=self.device, kind=EventKind.CHUNK_REQUEST, bundle=digest, missing=missing),
            "evt",
        )

    def next_command(self, timeout: float = 10.0) -> Command:
        return self.commands.get(timeout=timeout)

    def take_chunks(self, count: int, timeout: float = 10.0) -> list[Chunk]:
        """The next `count` chunks, in arrival order."""
        return [self.chunks.get(timeout=timeout) for _ in range(count)]

    def close(self) -> None:
        close_client(self.client)

    def crash(self) -> None:
        """Drop the connection without DISCONNECT, so the broker sends the Last Will."""
        sock = self.client.socket()
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)  # type: ignore[attr-defined]
        self.client.loop_stop()
