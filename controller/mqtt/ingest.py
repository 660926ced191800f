"""MQTT ingest: what agents publish, decoded, written in batches, acknowledged after the commit.

The MQTT session is persistent (stable client id, clean_session false) and acknowledgements
are manual: a QoS 1 message is acked only once the batch holding it is committed, so messages
received but not yet stored when the controller dies are delivered again later. Writes are
idempotent on message and detection ids, which makes those redeliveries harmless.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from controller.mqtt.records import Accepted, write_batch
from controller.mqtt.session import mqtt_client
from controller.settings import IngestSettings, MqttSettings
from protocol.codec import decode_agent_message
from protocol.errors import ProtocolError
from protocol.topics import AGENT_CHANNELS, Topics

log = logging.getLogger(__name__)

MAX_QUEUED_QOS0 = 10_000
_SAFE_VALUE = re.compile(r"^[A-Za-z0-9_./+:#$-]{1,200}$")


def kv(value: object) -> str:
    """A value for a key=value log line: bare when safe, else JSON-quoted and cut."""
    text = str(value)
    return text if _SAFE_VALUE.match(text) else json.dumps(text[:300])


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    mid: int
    qos: int
    at: float


class IngestHook(Protocol):
    """Something that reacts to ingested messages (the deployer, for one)."""

    def in_transaction(self, session: Session, batch: Sequence[Accepted]) -> None:
        """Runs inside the batch's transaction, before the commit."""

    def after_commit(self, batch: Sequence[Accepted]) -> None:
        """Runs after the batch is committed and acknowledged."""


@dataclass
class IngestStats:
    """Counters of the ingest; safe to read from any thread through snapshot()."""

    received: int = 0
    stored: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    batches: int = 0
    commit_failures: int = 0
    last_commit_ms: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def count_received(self) -> None:
        with self._lock:
            self.received += 1

    def count_rejected(self, code: str) -> None:
        with self._lock:
            self.rejected[code] += 1

    def count_batch(self, stored: Counter[str], commit_ms: float) -> None:
        with self._lock:
            self.stored.update(stored)
            self.batches += 1
            self.last_commit_ms = commit_ms

    def count_commit_failure(self) -> None:
        with self._lock:
            self.commit_failures += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "received": self.received,
                "stored": dict(self.stored),
                "rejected": dict(self.rejected),
                "batches": self.batches,
                "commit_failures": self.commit_failures,
                "last_commit_ms": self.last_commit_ms,
            }


_TRANSIENT = (OperationalError, PoolTimeout)


# ---- the ingest service ---------------------------------------------------------------------


class Ingest:
    """Subscribes to every agent channel and stores what arrives; see the module docstring."""

    def __init__(
        self,
        mqtt_settings: MqttSettings,
        ingest_settings: IngestSettings,
        sessions: sessionmaker[Session],
        *,
        hooks: Sequence[IngestHook] = (),
        stats: IngestStats | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.mqtt_settings = mqtt_settings
        self.settings = ingest_settings
        self.topics = Topics(mqtt_settings.topic_prefix)
        self.sessions = sessions
        self.hooks = list(hooks)
        self.stats = stats or IngestStats()
        self._clock = clock
        self._queue: queue.Queue[Received] = queue.Queue()
        self._accepting = False
        self._ready = threading.Event()
        self._draining = threading.Event()
        self._abandon = threading.Event()
        self._writer: threading.Thread | None = None
        self._client = mqtt_client(
            mqtt_settings, mqtt_settings.client_id, persistent=True, manual_ack=True
        )
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message

    # -- MQTT side (paho's network thread) --

    def subscriptions(self) -> list[tuple[str, int]]:
        share = self.mqtt_settings.share_group
        head = f"$share/{share}/" if share else ""
        channels = sorted(AGENT_CHANNELS, key=lambda c: c.value)
        return [(head + self.topics.device_filter(ch), 1) for ch in channels]

    def _on_connect(
        self, client: mqtt.Client, _u: Any, flags: Any, reason: Any, _p: Any = None
    ) -> None:
        if reason.is_failure:
            log.warning("event=ingest_connect_failed reason=%s", kv(reason))
            return
        log.info("event=ingest_connected session_present=%s", flags.session_present)
        client.subscribe(self.subscriptions())

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, codes: Any, _p: Any) -> None:
        if any(code.is_failure for code in codes):
            log.error("event=ingest_subscribe_refused codes=%s", kv(codes))
            return
        self._ready.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self._ready.clear()
        log.info("event=ingest_disconnected reason=%s", kv(reason))

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        if not self._accepting:
            return  # left unacknowledged: the broker delivers it again to our next session
        self.stats.count_received()
        if message.qos == 0 and self._queue.qsize() >= MAX_QUEUED_QOS0:
            # QoS 1 is bounded by the broker's window of unacknowledged messages; QoS 0
            # (health) is not, so while the database lags it is shed here, counted.
            self.stats.count_rejected("overload")
            return
        self._queue.put(
            Received(message.topic, bytes(message.payload), message.mid, message.qos, time.time())
        )

    # -- lifecycle --

    def start(self) -> Ingest:
        """Start the writer and connect; returns at once (see wait_ready)."""
        self._accepting = True
        self._writer = threading.Thread(target=self._run, name="ingest-writer", daemon=True)
        self._writer.start()
        self._client.connect_async(
            self.mqtt_settings.host, self.mqtt_settings.port, self.mqtt_settings.keepalive_s
        )
        self._client.loop_start()
        return self

    def wait_ready(self, timeout: float) -> bool:
        """True once connected and subscribed."""
        return self._ready.wait(timeout)

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def stop(self, timeout: float = 10.0) -> None:
        """Store and acknowledge what was received, then disconnect.

        Whatever cannot be committed within `timeout` stays unacknowledged for the next run.
        """
        self._accepting = False
        self._draining.set()
        if self._writer is not None:
            self._writer.join(timeout)
            if self._writer.is_alive():
                self._abandon.set()
                self._writer.join(5.0)
        self._client.disconnect()
        self._client.loop_stop()

    # -- writer thread --

    def _collect(self) -> list[Received] | None:
        try:
            first = self._queue.get(timeout=0.1)
        except queue.Empty:
            return None if self._draining.is_set() else []
        batch = [first]
        deadline = time.monotonic() + self.settings.max_delay_s
        while len(batch) < self.settings.batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(self._queue.get(timeout=min(remaining, self.settings.idle_flush_s)))
            except queue.Empty:
                break
        return batch

    def _run(self) -> None:
        while not self._abandon.is_set():
            received = self._collect()
            if received is None:
                return
            try:
                if received:
                    self._process(received)
            except Exception:  # the writer must outlive any one batch
                log.exception("event=ingest_batch_failed size=%d", len(received))

    def _decode(self, received: Sequence[Received]) -> list[Accepted]:
        accepted = []
        for item in received:
            try:
                parsed, message = decode_agent_message(self.topics, item.topic, item.payload)
            except ProtocolError as err:
                self.stats.count_rejected(err.code)
                log.warning(
                    "event=ingest_rejected code=%s topic=%s detail=%s",
                    err.code,
                    kv(item.topic),
                    kv(err),
                )
                continue
            if parsed.channel is None or parsed.device_id is None:
                # decode_agent_message answers only for device channels; anything else is not
                # a message to store
                self.stats.count_rejected("not_a_device_channel")
                continue
            accepted.append(Accepted(parsed.device_id, parsed.channel, message, item.at))
        return accepted

    def _process(self, received: Sequence[Received]) -> None:
        accepted = self._decode(received)
        started = time.perf_counter()
        stored = self._commit(accepted)
        if stored is None:
            return  # abandoned: nothing is acknowledged, the broker keeps the messages
        self.stats.count_batch(stored, (time.perf_counter() - started) * 1000.0)
        for item in received:
            if item.qos > 0:
                self._client.ack(item.mid, item.qos)
        for hook in self.hooks:
            try:
                hook.after_commit(accepted)
            except Exception:
                log.exception("event=ingest_hook_failed hook=%s", type(hook).__name__)

    def _write(self, batch: Sequence[Accepted]) -> Counter[str]:
        with self.sessions() as session, session.begin():
            stored = write_batch(session, batch, self._clock())
            for hook in self.hooks:
                hook.in_transaction(session, batch)
        return stored

    def _commit(self, batch: Sequence[Accepted]) -> Counter[str] | None:
        """Write with retries; None when abandoned. Unstorable messages are dropped."""
        delay = 0.05
        while True:
            try:
                return self._write(batch)
            except _TRANSIENT as exc:
                self.stats.count_commit_failure()
                log.warning(
                    "event=ingest_commit_failed retry_in_s=%.2f error=%s",
                    delay,
                    kv(_short(exc)),
                )
                if self._abandon.wait(delay):
                    return None
                delay = min(delay * 2, 5.0)
            except Exception as exc:  # a bad row or a hook's bug: isolate the message
                if len(batch) <= 1:
                    # The same input would fail forever: drop it, loudly, and go on.
                    self.stats.count_rejected("unstorable")
                    log.error("event=ingest_unstorable error=%s", kv(_short(exc)))
                    return Counter()
                total: Counter[str] = Counter()
                for item in batch:
                    one = self._commit([item])
                    if one is None:
                        return None
                    total.update(one)
                return total


def _short(exc: BaseException) -> str:
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        return f"{type(exc.orig).__name__}: {exc.orig}".splitlines()[0]
    return f"{type(exc).__name__}: {exc}".splitlines()[0]
