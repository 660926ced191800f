"""The agent's MQTT session: retained state with a Last Will, commands in, telemetry out.

Callbacks run on paho's network thread and only hand work to a queue; the daemon's control
thread does the work, so a slow install never stalls keep-alives or the frame loop's publishes.

Commands are acknowledged to the broker by hand (paho's `manual_ack`): the control thread calls
`done(item)` once the command's effect is durable (a deploy offer saved, a config written), so an
agent killed between receipt and that point gets the command again from its persistent session.
Bundle chunks are acknowledged on receipt: a lost one is asked for again.
"""

from __future__ import annotations

import logging
import queue
import ssl
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
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
    ca_file: Path | None = Field(
        None, description="CA (PEM) of the broker's certificate; set: connect over TLS"
    )
    cert_file: Path | None = Field(
        None, description="client certificate; empty with enrollment: the enrolled one"
    )
    key_file: Path | None = Field(None, description="client key; empty: the device key")


@dataclass(frozen=True)
class Inbound:
    """One unit of work for the control thread: a command or a bundle chunk."""

    kind: str  # "command" | "chunk"
    payload: Any
    digest: str | None = None
    mid: int = 0  # the broker's message id, acknowledged by `AgentSession.done`
    connection: int = 0  # which connection it came on: a message id means nothing on another


class AgentSession:
    """Owns the paho client; everything it receives goes to `inbox`."""

    def __init__(
        self,
        broker: BrokerSettings,
        device_id: str,
        state: Callable[[], State],
        tags: Sequence[str] = (),
    ) -> None:
        self.broker = broker
        self.topics = Topics(broker.prefix)
        self.device_id = device_id
        self.inbox: queue.Queue[Inbound] = queue.Queue(maxsize=10_000)
        self._state = state
        # the device's own tags travel in every state, the offline one (and the will) too
        self._offline = encode(
            State(device=self.device_id, status=DeviceStatus.OFFLINE, tags=tuple(tags))
        )
        self._bundle_subs: set[str] = set()
        self._lock = threading.Lock()
        self.connected = threading.Event()
        self.connects = 0
        self.rejected = 0
        self._last_qos1: mqtt.MQTTMessageInfo | None = None
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.device_id,
            clean_session=False,
            manual_ack=True,
        )
        if broker.username:
            client.username_pw_set(broker.username, broker.password)
        # our own context, so a renewed certificate can be loaded for the next connection
        self._tls: ssl.SSLContext | None = None
        if broker.ca_file is not None:
            self._tls = ssl.create_default_context(cafile=str(broker.ca_file))
            if broker.cert_file is not None:
                key = str(broker.key_file) if broker.key_file else None
                self._tls.load_cert_chain(str(broker.cert_file), key)
            client.tls_set_context(self._tls)
        client.will_set(self.topics.state(self.device_id), self._offline, qos=1, retain=True)
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

    def reload_certificate(self, cert_file: Path, key_file: Path) -> None:
        """Use a renewed client certificate from the next connection on (TLS sessions only)."""
        if self._tls is None:
            return
        self._tls.load_cert_chain(str(cert_file), str(key_file))
        log.info("event=client_certificate_reloaded cert=%s", cert_file)

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
                self.topics.state(self.device_id), self._offline, qos=1, retain=True
            )
            try:
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError):
                log.warning("event=offline_state_not_sent")
        self.client.disconnect()
        self.client.loop_stop()
        # paho keeps its loop's wake-up socket pair open until the client is collected
        reset = getattr(self.client, "_reset_sockets", None)
        if callable(reset):
            reset()

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

    def done(self, item: Inbound) -> None:
        """Acknowledge a command to the broker once handling made its effect durable.

        A message from an earlier connection is not acknowledged: the broker sends it again on
        the persistent session, and the command handler drops the repeat by its id."""
        if item.mid and item.connection == self.connects:
            self.client.ack(item.mid, 1)

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
        chunk_acked = False
        try:
            parsed = self.topics.parse(msg.topic)
            if parsed.digest is not None:
                self._ack_now(client, msg)  # a lost chunk is asked for again
                chunk_acked = True
                item = Inbound("chunk", decode_chunk(msg.payload), digest=parsed.digest)
            else:
                command: Command = decode_command(msg.payload)
                if command.device != self.device_id:
                    raise ProtocolError(f"command for {command.device!r} on our topic")
                mid = msg.mid if msg.qos > 0 else 0
                item = Inbound("command", command, mid=mid, connection=self.connects)
        except ProtocolError as exc:
            if not chunk_acked:
                self._ack_now(client, msg)  # redelivering it would not make it valid
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
            # a command left unacknowledged comes again on the next connection
            self.rejected += 1
            log.error("event=inbox_full dropped=%s", item.kind)

    @staticmethod
    def _ack_now(client: mqtt.Client, msg: mqtt.MQTTMessage) -> None:
        if msg.qos > 0:
            client.ack(msg.mid, msg.qos)
