"""The controller's MQTT connections: the client factory and the capped QoS 1 publisher."""

from __future__ import annotations

import logging
import threading
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from controller.settings import MqttSettings

log = logging.getLogger(__name__)


def close_client(client: mqtt.Client) -> None:
    """Disconnect, stop the network thread and close every socket the client holds.

    paho keeps the socket pair that wakes its loop thread open after `loop_stop()` until the
    client is garbage collected; a controller has nine clients, so each start and stop would
    otherwise leave 18 descriptors behind (and paho's select() fails past descriptor 1023).
    """
    client.disconnect()
    client.loop_stop()
    reset = getattr(client, "_reset_sockets", None)
    if callable(reset):
        reset()


def mqtt_client(
    settings: MqttSettings, client_id: str, *, persistent: bool, manual_ack: bool = False
) -> mqtt.Client:
    """A paho client (callback API v2, MQTT 3.1.1) set up from the broker settings."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=not persistent,
        protocol=mqtt.MQTTv311,
        manual_ack=manual_ack,
    )
    if settings.username:
        client.username_pw_set(settings.username, settings.password)
    if settings.ca_file is not None:
        # the broker's certificate is checked against the fleet CA; ours proves who we are
        client.tls_set(
            ca_certs=str(settings.ca_file),
            certfile=str(settings.cert_file) if settings.cert_file else None,
            keyfile=str(settings.key_file) if settings.key_file else None,
        )
    client.reconnect_delay_set(min_delay=1, max_delay=10)
    return client


class PublishError(RuntimeError):
    """A message could not be handed to the broker connection."""


class Publisher:
    """An MQTT connection for outgoing messages that caps unacknowledged QoS 1 publishes.

    A publish waits for a free slot; a slot frees when the broker's PUBACK arrives (on_publish).
    """

    def __init__(self, settings: MqttSettings, max_inflight: int, client_id: str) -> None:
        self.settings = settings
        self.max_inflight = max_inflight
        self._client = mqtt_client(settings, client_id, persistent=False)
        self._client.max_inflight_messages_set(max(max_inflight, 20))
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        self._cond = threading.Condition()
        self._pending: set[int] = set()
        self._early: set[int] = set()
        self._connected = threading.Event()
        self._closed = False
        self.inflight = 0
        self.peak_inflight = 0
        self.published = 0

    def start(self) -> Publisher:
        """Connect in the background; returns at once (see wait_ready)."""
        self._client.connect_async(
            self.settings.host, self.settings.port, self.settings.keepalive_s
        )
        self._client.loop_start()
        return self

    def wait_ready(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    @property
    def ready(self) -> bool:
        return self._connected.is_set()

    def stop(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        close_client(self._client)

    def _on_connect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            log.warning("event=publisher_connect_failed reason=%s", reason)
        else:
            self._connected.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, _r: Any, _p: Any) -> None:
        self._connected.clear()

    def _on_publish(self, _c: mqtt.Client, _u: Any, mid: int, _r: Any, _p: Any) -> None:
        with self._cond:
            if mid in self._pending:
                self._pending.discard(mid)
                self.inflight -= 1
                self._cond.notify_all()
            else:  # acknowledged before publish() got to record its mid
                self._early.add(mid)

    def publish(self, topic: str, payload: bytes, *, timeout: float = 30.0) -> None:
        """Publish at QoS 1 once fewer than max_inflight are unacknowledged.

        Raises PublishError when no slot frees up within `timeout` or the client refuses.
        """
        with self._cond:
            if not self._cond.wait_for(
                lambda: self._closed or self.inflight < self.max_inflight, timeout
            ):
                raise PublishError(f"{self.inflight} publishes unacknowledged for {timeout}s")
            if self._closed:
                raise PublishError("the publisher is stopped")
            self.inflight += 1
            self.peak_inflight = max(self.peak_inflight, self.inflight)
        # Not under our lock: paho calls on_publish while holding its own.
        info = self._client.publish(topic, payload, qos=1)
        with self._cond:
            if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                self.inflight -= 1
                self._cond.notify_all()
                raise PublishError(f"publish to {topic} refused: {mqtt.error_string(info.rc)}")
            # NO_CONN: paho keeps the message and sends it once the connection is back
            self.published += 1
            if info.mid in self._early:
                self._early.discard(info.mid)
                self.inflight -= 1
                self._cond.notify_all()
            else:
                self._pending.add(info.mid)
