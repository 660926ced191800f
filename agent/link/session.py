"""The agent's MQTT session: retained state with a Last Will, commands in, telemetry out.

Callbacks run on paho's network thread and only hand work to a queue; the daemon's control
thread does the work, so a slow install never stalls keep-alives or the frame loop's publishes.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import BaseModel, ConfigDict, Field

from protocol.codec import decode_chunk, decode_command, encode
from protocol.errors import ProtocolError
from protocol.events import DeviceStatus
from protocol.messages import Command, State
from protocol.topics import DEFAULT_PREFIX, Topics

log = logging.getLogger(__name__)


class BrokerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = Field("127.0.0.1", description="broker host")
    port: Annotated[int, Field(gt=0, lt=65536)] = Field(1883, description="broker port")
    username: str | None = Field(None, description="broker user name (per-device credentials)")
    password: str | None = Field(None, description="broker password")
    prefix: str = Field(DEFAULT_PREFIX, description="topic prefix shared with the controller")
    keepalive: Annotated[int, Field(ge=5, le=3600)] = Field(30, description="seconds")
    max_inflight: Annotated[int, Field(ge=1, le=1000)] = Field(20, description="QoS 1 window")


@dataclass(frozen=True)
class Inbound:
    """One unit of work for the control thread: a command or a bundle chunk."""

    kind: str  # "command" | "chunk"
    payload: Any
    digest: str | None = None


class AgentSession:
    """Owns the paho client; everything it receives goes to `inbox`."""

    def __init__(self, broker: BrokerSettings, device_id: str, state: Callable[[], State]) -> None:
        self.broker = broker
        self.topics = Topics(broker.prefix)
        self.device_id = device_id
        self.inbox: queue.Queue[Inbound] = queue.Queue(maxsize=10_000)
        self._state = state
        self._bundle_subs: set[str] = set()
        self._lock = threading.Lock()
        self.connected = threading.Event()
        self.connects = 0
        self.rejected = 0
        self._last_qos1: mqtt.MQTTMessageInfo | None = None
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"edgefleet-agent-{self.device_id}",
            clean_session=False,
        )
        if broker.username:
            client.username_pw_set(broker.username, broker.password)
        client.will_set(
            self.topics.state(self.device_id),
            encode(State(device=self.device_id, status=DeviceStatus.OFFLINE)),
            qos=1,
            retain=True,
        )
        client.max_inflight_messages_set(broker.max_inflight)
        # unbounded here: the outbox pump caps what it hands paho at its own in-flight window
        client.max_queued_messages_set(0)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        # told of every PUBACK (paho message id); the outbox pump deletes what was acknowledged
        self.on_ack: Callable[[int], None] = lambda mid: None
        self.client = client

    @property
    def reconnects(self) -> int:
        return max(0, self.connects - 1)

    def start(self) -> None:
        self.client.connect_async(self.broker.host, self.broker.port, self.broker.keepalive)
        self.client.loop_start()

    def stop(self, timeout: float = 5.0) -> None:
        """Let queued QoS 1 messages go out, say offline (retained), then disconnect."""
        if self.connected.is_set() and self._last_qos1 is not None:
            try:
                # messages are sent in order, so the last one's PUBACK means all went out
                self._last_qos1.wait_for_publish(timeout)
            except (RuntimeError, ValueError):
                log.warning("event=queued_messages_not_sent")
        if self.connected.is_set():
            info = self.client.publish(
                self.topics.state(self.device_id),
                encode(State(device=self.device_id, status=DeviceStatus.OFFLINE)),
                qos=1,
                retain=True,
            )
            try:
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError):
                log.warning("event=offline_state_not_sent")
        self.client.disconnect()
        self.client.loop_stop()

    def publish_state(self) -> None:
        self.client.publish(
            self.topics.state(self.device_id), encode(self._state()), qos=1, retain=True
        )

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> mqtt.MQTTMessageInfo:
        info = self.client.publish(topic, payload, qos=qos)
        if qos > 0:
            self._last_qos1 = info
        return info

    def publish_mid(self, topic: str, payload: bytes) -> int:
        """Publish at QoS 1 and return paho's message id; raises ValueError for a bad message."""
        return int(self.publish(topic, payload, qos=1).mid)

    def subscribe_bundle(self, digest: str) -> None:
        with self._lock:
            self._bundle_subs.add(digest)
        self.client.subscribe(self.topics.bundle_chunks(digest), qos=1)

    def unsubscribe_bundle(self, digest: str) -> None:
        with self._lock:
            self._bundle_subs.discard(digest)
        self.client.unsubscribe(self.topics.bundle_chunks(digest))

    # ---- paho callbacks (network thread) ---------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            log.error("event=mqtt_connect_refused reason=%r", str(reason))
            return
        self.connects += 1
        log.info("event=mqtt_connected connects=%d", self.connects)
        subs = [(self.topics.cmd(self.device_id), 1)]
        with self._lock:
            subs += [(self.topics.bundle_chunks(d), 1) for d in sorted(self._bundle_subs)]
        client.subscribe(subs)
        self.publish_state()
        self.connected.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        self.connected.clear()
        log.warning("event=mqtt_disconnected reason=%r", str(reason))

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, properties: Any
    ) -> None:
        self.on_ack(mid)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            parsed = self.topics.parse(msg.topic)
            if parsed.digest is not None:
                item = Inbound("chunk", decode_chunk(msg.payload), digest=parsed.digest)
            else:
                command: Command = decode_command(msg.payload)
                if command.device != self.device_id:
                    raise ProtocolError(f"command for {command.device!r} on our topic")
                item = Inbound("command", command)
        except ProtocolError as exc:
            self.rejected += 1
            log.warning(
                "event=message_rejected code=%s topic=%r error=%r",
                getattr(exc, "code", "protocol_error"),
                msg.topic,
                str(exc),
            )
            return
        try:
            self.inbox.put_nowait(item)
        except queue.Full:
            self.rejected += 1
            log.error("event=inbox_full dropped=%s", item.kind)
