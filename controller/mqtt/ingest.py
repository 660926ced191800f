"""MQTT ingest: what agents publish, journalled, acknowledged, then stored in batches.

The MQTT sessions are persistent (stable client ids, clean_session false) and acknowledgements
are manual. With the journal (the default, controller.mqtt.journal), a QoS 1 message is
acknowledged once it is synced to a local segment file, and the writer stores the journal in
the database at its own pace; the journal's position is committed with the rows, so each
message is stored once even across crashes. Without a journal (`ingest.journal = false`, or
while the journal is over its size limit or its disk failed) a message is acknowledged only
after the commit of the batch holding it. Either way, a message received but not yet safe
when the controller dies is delivered again by the broker, and writes are idempotent on
message and detection ids, so redeliveries are harmless and replicas sharing one database
store every message once.

The broker's window. A broker sends a client only so many unacknowledged QoS 1 messages
(mosquitto: `max_inflight_messages`, 100 in our broker config, 20 by default), and queues the
rest for it only up to `max_queued_bytes`, past which it drops them. Acknowledging after the
commit let one round trip (collect, decode, commit, ack) move at most one window, and turned
every slow stretch of the database into a race against the broker's queue. What was weighed:

- MQTT 5 Receive Maximum: one session states a larger window, but every broker we support would
  need MQTT 5 (RabbitMQ 3.x speaks 3.1.1 only), our sessions would move to MQTT 5 semantics
  (session expiry instead of clean_session), a broker may still cap it by configuration, and
  it does nothing for a database that stalls for longer than the broker's queue lasts.
- Several sessions in one shared-subscription group (`sessions`, default 8): each session
  brings its own window, the broker spreads messages over them, and it is the same mechanism
  that spreads ingest over replicas (`$share/<group>/…`: MQTT 3.1.1 and 5 on mosquitto >= 1.6,
  EMQX, VerneMQ, HiveMQ). Kept: measured on a 2-core box with 4,000 devices (one batch per
  second each), 4 sessions kept up with 74 % of the offered rate, 8 sessions with a 2 ms idle
  flush 97 %. With `sessions = 1` and no share group the ingest uses a plain subscription,
  for brokers without shared subscriptions (RabbitMQ 3.x).
- A durable local journal acknowledged once on disk: added on top of the sessions. Every
  message is written twice (journal, then database; about 3 µs of CPU per message for the
  journal's part, one sync per 10 ms), and what a replica journalled is stored only when that
  replica runs again. In exchange the broker's queue no longer bounds how long the database
  may lag: at 10,000 devices one replica's eight sessions overflowed after about 6 s behind,
  while the journal holds `journal_max_bytes` (1 GiB: minutes) on disk, not in memory.

A replica's sessions are persistent: mosquitto keeps dispatching a shared group's messages to
a member that is down and queues them for it, so a replica that dies loses nothing but must
come back (systemd restarts it) for its share to be stored; QoS 0 health for it is dropped by
the broker meanwhile (mosquitto's `queue_qos0_messages` is off by default).

The sessions run on one asyncio loop (controller.mqtt.receiver: a lean MQTT 3.1.1 receiver,
about 5 µs of CPU per message where paho's threads took 30-60 µs); payloads are decoded on the
writer thread, never on the network thread, which only size-checks and hands them to the
journal (or the writer's queue). Backpressure: past the journal's limit QoS 1 waits in the
broker's queue for our sessions again, and QoS 0 health past `max_queued` is shed here,
counted as `overload`.

One process holds the interpreter lock for all of that; with `ingest.workers` the bulk
channels (BULK_CHANNELS) go to worker processes, each running an Ingest of its own
(controller.mqtt.workers), and the controller's Ingest takes the other channels.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from controller.mqtt.journal import Entry, Journal, Position
from controller.mqtt.receiver import Receiver, ReceiverEvents, Subscription
from controller.mqtt.records import (
    Accepted,
    HealthSampler,
    WriteState,
    drop_misaddressed,
    load_journal_position,
    save_journal_position,
    write_batch,
)
from controller.mqtt.retention import ensure_partitions
from controller.settings import IngestSettings, MqttSettings
from protocol.codec import decode_agent_message
from protocol.errors import ProtocolError
from protocol.topics import AGENT_CHANNELS, Channel, Topics

log = logging.getLogger(__name__)

DEFAULT_SHARE_GROUP = "edgefleet-ingest"
SESSIONS_FILE = "sessions-used"
"""In the journal's folder: how many sessions this ingest has opened, at most, and not retired."""
RETIRED_IDLE_S = 10.0
"""Sessions above a lowered `ingest.sessions` are forgotten once connected, unsubscribed and
quiet this long: what the broker had queued for them comes right after they connect."""
BULK_CHANNELS = frozenset({Channel.DET, Channel.HEALTH})
"""What ingest worker processes take (controller.mqtt.workers): nearly all of the traffic, and
none of it for the controller's hooks, which see events and acks only."""
PARTITION_CHECK_S = 3600.0
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.0, 5.0)
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
    session: int = 0
    journaled: bool = False
    """Read back from the journal: acknowledged to the broker already."""


_WAKE = Received("", b"", 0, 0, 0.0)
"""Put on the writer's queue when the journal has new records: wakes it without a poll."""


class IngestHook(Protocol):
    """Something that reacts to ingested messages (the deployer, for one)."""

    def in_transaction(self, session: Session, batch: Sequence[Accepted]) -> None:
        """Runs inside the batch's transaction, before the commit."""

    def after_commit(self, batch: Sequence[Accepted]) -> None:
        """Runs after the batch is committed and acknowledged."""


@dataclass
class IngestStats:
    """Counters of the ingest; safe to read from any thread through snapshot()."""

    stored: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    batches: int = 0
    commit_failures: int = 0
    last_commit_ms: float = 0.0
    acked: int = 0
    lag_s: float = 0.0
    queue_depth: Callable[[], int] = lambda: 0
    journal_bytes: Callable[[], int] = lambda: 0
    journal_failures: Callable[[], int] = lambda: 0
    latency_buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_S) + 1))
    latency_sum_s: float = 0.0
    peers: Callable[[], Sequence[dict[str, Any]]] = lambda: ()
    """Snapshots of the ingest worker processes, folded into this one's."""
    _received: dict[int, int] = field(default_factory=dict, repr=False)
    _received_qos1: dict[int, int] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def received(self) -> int:
        return sum(self._received.copy().values())

    def count_received(self, session: int, qos: int) -> None:
        # no lock, on the network threads for every message: each session's thread alone
        # writes its own keys, so the counts are exact
        self._received[session] = self._received.get(session, 0) + 1
        if qos:
            self._received_qos1[session] = self._received_qos1.get(session, 0) + 1

    def session_received(self, session: int) -> tuple[int, int]:
        """Messages one session received so far: all, and those at QoS 1."""
        return self._received.get(session, 0), self._received_qos1.get(session, 0)

    def count_rejected(self, code: str, n: int = 1) -> None:
        with self._lock:
            self.rejected[code] += n

    def count_acked(self, n: int) -> None:
        with self._lock:
            self.acked += n

    def count_batch(
        self, stored: Counter[str], commit_ms: float, lag_s: float, latencies: Sequence[float]
    ) -> None:
        with self._lock:
            self.stored.update(stored)
            self.batches += 1
            self.last_commit_ms = commit_ms
            self.lag_s = lag_s
            for value in latencies:
                self.latency_sum_s += value
                for i, bound in enumerate(LATENCY_BUCKETS_S):
                    if value <= bound:
                        self.latency_buckets[i] += 1
                        break
                else:
                    self.latency_buckets[-1] += 1

    def count_commit_failure(self) -> None:
        with self._lock:
            self.commit_failures += 1

    def snapshot(self) -> dict[str, Any]:
        """This process's counters, plus its worker processes' (merge_snapshots)."""
        return merge_snapshots([self.own_snapshot(), *self.peers()])

    def own_snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "received": sum(self._received.copy().values()),
                "stored": dict(self.stored),
                "rejected": dict(self.rejected),
                "batches": self.batches,
                "commit_failures": self.commit_failures,
                "last_commit_ms": self.last_commit_ms,
                "queued": self.queue_depth(),
                "journal_bytes": self.journal_bytes(),
                "journal_failures": self.journal_failures(),
                "unacked": sum(self._received_qos1.copy().values()) - self.acked,
                "lag_s": self.lag_s,
                "latency_buckets": dict(
                    zip([*LATENCY_BUCKETS_S, float("inf")], self.latency_buckets, strict=True)
                ),
                "latency_sum_s": self.latency_sum_s,
            }


_SUMMED = (
    "received",
    "batches",
    "commit_failures",
    "queued",
    "journal_bytes",
    "journal_failures",
    "unacked",
    "latency_sum_s",
)


def merge_snapshots(snapshots: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One snapshot for several ingests (a controller and its worker processes): counts and
    gauges of backlog add up, the latency buckets add up, and the slowest commit and the
    longest lag stand for all."""
    first, *others = snapshots
    if not others:
        return first
    merged = dict(first)
    stored: Counter[str] = Counter(first["stored"])
    rejected: Counter[str] = Counter(first["rejected"])
    buckets: Counter[float] = Counter(first["latency_buckets"])
    for snap in others:
        for key in _SUMMED:
            merged[key] += snap[key]
        for key in ("last_commit_ms", "lag_s"):
            merged[key] = max(merged[key], snap[key])
        stored.update(snap["stored"])
        rejected.update(snap["rejected"])
        buckets.update(snap["latency_buckets"])
    merged["stored"], merged["rejected"] = dict(stored), dict(rejected)
    merged["latency_buckets"] = {bound: buckets[bound] for bound in first["latency_buckets"]}
    return merged


_TRANSIENT = (OperationalError, PoolTimeout)


# ---- the ingest service ---------------------------------------------------------------------


class Ingest(ReceiverEvents):
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
        journal_dir: Path | None = None,
        channels: Collection[Channel] = AGENT_CHANNELS,
        retiring: bool = False,
    ) -> None:
        self.mqtt_settings = mqtt_settings
        self.settings = ingest_settings
        self.channels = frozenset(channels)
        # retiring: the sessions take what the broker kept for them and subscribe nothing
        self.retiring = retiring
        if not self.channels or not self.channels <= AGENT_CHANNELS:
            raise ValueError(f"an ingest takes some agent channels, not {sorted(self.channels)}")
        self.topics = Topics(mqtt_settings.topic_prefix)
        self.sessions = sessions
        self.hooks = list(hooks)
        self.stats = stats or IngestStats()
        self._clock = clock
        # C-level and lock-light: nine threads meet here on every message
        self._queue: queue.SimpleQueue[Received] = queue.SimpleQueue()
        self.stats.queue_depth = self._queue.qsize
        self._accepting = False
        self._subscribed: set[int] = set()
        self._ready = threading.Event()
        self._draining = threading.Event()
        self._abandon = threading.Event()
        self._writer: threading.Thread | None = None
        self._state = WriteState(HealthSampler(ingest_settings.health_history_s))
        self._partitions_checked = 0.0
        self._journal: Journal | None = None
        self._next_journal_read = 0.0
        if journal_dir is not None and ingest_settings.journal:
            journal = Journal(
                journal_dir,
                max_bytes=ingest_settings.journal_max_bytes,
                segment_bytes=ingest_settings.journal_segment_bytes,
                on_durable=self._journaled,
                on_failed=self._not_journaled,
            )
            self._journal = journal
            self.stats.journal_bytes = journal.backlog_bytes
            self.stats.journal_failures = lambda: journal.failures
        count = ingest_settings.sessions
        # Sessions an earlier, larger `sessions` opened stay in the broker's share group, which
        # goes on queueing a share for them: they connect once more, take what was queued,
        # subscribe nothing, and are forgotten once quiet (_forget_retired_sessions).
        self._sessions_file = journal_dir / SESSIONS_FILE if journal_dir is not None else None
        used = _read_sessions_used(self._sessions_file)
        total = max(count, used)
        if self._sessions_file is not None and total != used:
            _write_sessions_used(self._sessions_file, total)
        # a retiring ingest (a worker above a lowered count) retires every session
        self._retired_sessions = frozenset(range(0 if retiring else count, total))
        self._retired_pending = set(self._retired_sessions)
        self._retired_acked: Counter[int] = Counter()
        self._retired_seen: tuple[tuple[int, int], ...] = ()
        self._retired_since = 0.0
        if self._retired_sessions:
            log.info("event=ingest_sessions_retiring count=%d", len(self._retired_sessions))
        base = mqtt_settings.client_id
        # session 0 keeps the plain client id, so a single-session ingest resumes the broker
        # session that earlier versions left
        ids = [base] + [f"{base}-{i}" for i in range(1, total)]
        self._receiver = Receiver(mqtt_settings, ids, self)

    # -- MQTT side (the receiver's loop thread) --

    @property
    def share_group(self) -> str:
        """The shared-subscription group; empty for a plain subscription."""
        if self.mqtt_settings.share_group:
            return self.mqtt_settings.share_group
        return DEFAULT_SHARE_GROUP if self.settings.sessions > 1 else ""

    def _filters(self, group: str, channels: Collection[Channel] | None = None) -> list[str]:
        head = f"$share/{group}/" if group else ""
        ours = sorted(self.channels if channels is None else channels, key=lambda c: c.value)
        return [head + self.topics.device_filter(ch) for ch in ours]

    def subscriptions(self) -> list[tuple[str, int]]:
        if self.retiring:
            return []
        return [(f, 1) for f in self._filters(self.share_group)]

    def connected(self, index: int, session_present: bool) -> Subscription:
        log.info(
            "event=ingest_connected session=%d session_present=%s group=%s",
            index,
            session_present,
            kv(self.share_group or "-"),
        )
        stale: list[str] = []
        retired = index in self._retired_sessions
        if session_present or retired:
            # a persistent session remembers what an earlier configuration subscribed: the
            # other form (it would deliver every message a second time), or channels that
            # worker processes take now (they would share them with this session)
            other = DEFAULT_SHARE_GROUP if not self.share_group else ""
            wanted = [] if retired else [f for f, _ in self.subscriptions()]
            remembered = self._filters(other, AGENT_CHANNELS) + self._filters(
                self.share_group, AGENT_CHANNELS
            )
            stale = [f for f in remembered if f not in wanted]
        return Subscription(stale, [] if retired else self.subscriptions())

    def subscribed(self, index: int, granted: list[int]) -> None:
        if any(code >= 0x80 for code in granted):
            log.error("event=ingest_subscribe_refused session=%d codes=%s", index, granted)
            return
        self._subscribed.add(index)
        if len(self._subscribed) == len(self._receiver.client_ids):
            self._ready.set()

    def disconnected(self, index: int, reason: str) -> None:
        self._subscribed.discard(index)
        self._ready.clear()
        log.info("event=ingest_disconnected session=%d reason=%s", index, kv(reason))

    def message(self, index: int, topic: str, payload: bytes, qos: int, pid: int) -> None:
        if not self._accepting:
            return  # left unacknowledged: the broker delivers it again to our next session
        self.stats.count_received(index, qos)
        if len(payload) > self.settings.max_payload_bytes:
            # dropped before it costs a decode; acknowledged, or it would hold a slot of the
            # window until the next connection
            self.stats.count_rejected("payload_too_large")
            log.warning(
                "event=ingest_rejected code=payload_too_large topic=%s bytes=%d",
                kv(topic),
                len(payload),
            )
            if qos > 0:
                self._receiver.ack([(index, pid)])
                self.stats.count_acked(1)
                self._note_retired_acks([(index, pid)])
            return
        received = Received(topic, payload, pid, qos, time.time(), index)
        journal = self._journal
        if journal is not None and journal.accepting():
            # acknowledged once it is synced to disk (_journaled), stored by the writer later
            journal.append(Entry(topic, payload, qos, received.at, received))
            return
        if qos == 0 and self._queue.qsize() >= self.settings.max_queued:
            # QoS 1 is bounded by the broker's windows of unacknowledged messages; QoS 0
            # (health) is not, so while the database lags it is shed here, counted.
            self.stats.count_rejected("overload")
            return
        self._queue.put(received)

    # -- journal side (the journal's thread) --

    def _journaled(self, entries: Sequence[Entry]) -> None:
        acks = []
        for entry in entries:
            item = entry.token
            if isinstance(item, Received) and item.qos > 0:
                acks.append((item.session, item.mid))
        self._receiver.ack(acks)
        self.stats.count_acked(len(acks))
        self._note_retired_acks(acks)
        self._queue.put(_WAKE)

    def _not_journaled(self, entries: Sequence[Entry]) -> None:
        # the write failed: these go the way messages go without a journal, acknowledged
        # after their commit
        for entry in entries:
            if isinstance(entry.token, Received):
                self._queue.put(entry.token)

    # -- lifecycle --

    def start(self) -> Ingest:
        """Start the writer and connect; returns at once (see wait_ready)."""
        if self._journal is not None:
            self._journal.start()
        self._accepting = True
        self._writer = threading.Thread(target=self._run, name="ingest-writer", daemon=True)
        self._writer.start()
        self._receiver.start()
        return self

    def wait_ready(self, timeout: float) -> bool:
        """True once every session is connected and subscribed."""
        return self._ready.wait(timeout)

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def stop(self, timeout: float = 10.0) -> None:
        """Store and acknowledge what was received, then disconnect.

        Whatever cannot be committed within `timeout` stays unacknowledged for the next run.
        """
        self._accepting = False
        if self._journal is not None:
            # what is appended gets synced and acknowledged; the writer stores what it can in
            # `timeout`, and the rest waits in the journal for the next start
            self._journal.stop()
        self._draining.set()
        if self._writer is not None:
            self._writer.join(timeout)
            if self._writer.is_alive():
                self._abandon.set()
                self._writer.join(5.0)
        self._receiver.stop()
        if self._journal is not None and (self._writer is None or not self._writer.is_alive()):
            self._journal.close()

    # -- writer thread --

    def _collect(self) -> tuple[list[Received], Position | None] | None:
        """The next batch and, when it holds journal records, the journal position after it;
        None once stopping with nothing left."""
        journal = self._journal
        pending = journal is not None and journal.pending()
        now = time.monotonic()
        if (
            journal is not None
            and pending
            and (self._draining.is_set() or now >= self._next_journal_read)
        ):
            return self._collect_journal(journal)
        timeout = max(0.0, self._next_journal_read - now) if pending else 0.1
        try:
            first = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None if self._draining.is_set() and not pending else ([], None)
        batch = [] if first is _WAKE else [first]
        deadline = time.monotonic() + self.settings.max_delay_s
        while batch and len(batch) < self.settings.batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                item = self._queue.get(timeout=min(remaining, self.settings.idle_flush_s))
            except queue.Empty:
                break
            if item is not _WAKE:
                batch.append(item)
        return batch, None

    def _collect_journal(self, journal: Journal) -> tuple[list[Received], Position | None]:
        limit = self.settings.batch_size
        records, position = journal.read(limit)
        if len(records) < limit:
            # caught up: let the next batch gather (acknowledgements do not wait for it)
            self._next_journal_read = time.monotonic() + self.settings.journal_commit_interval_s
        batch = [Received(r.topic, r.payload, 0, r.qos, r.at, journaled=True) for r in records]
        # messages the journal could not take wait for a commit to be acknowledged: take them
        while len(batch) < 2 * limit:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _WAKE:
                batch.append(item)
        return batch, position

    def _open_journal(self, journal: Journal) -> bool:
        """Read from where the database says this journal's writer stood; False if stopping."""
        delay = 0.05
        while not self._abandon.is_set():
            try:
                with self.sessions() as session:
                    stored = load_journal_position(session, journal.id)
            except _TRANSIENT as exc:
                log.warning("event=ingest_journal_open_failed error=%s", kv(_short(exc)))
                if self._abandon.wait(delay):
                    return False
                delay = min(delay * 2, 5.0)
                continue
            journal.seek(Position(*stored) if stored is not None else None)
            backlog = journal.backlog_bytes()
            if backlog:
                log.info("event=ingest_journal_replay bytes=%d", backlog)
            return True
        return False

    @property
    def sessions_retired(self) -> bool:
        """True once no retired session is left to wait for (_forget_retired_sessions)."""
        return not self._retired_pending

    def _note_retired_acks(self, acks: Sequence[tuple[int, int]]) -> None:
        # from the journal's and the writer's threads: a count lost between them only keeps
        # a retired session a start longer, never forgets one early
        if self._retired_pending:
            self._retired_acked.update(i for i, _ in acks if i in self._retired_pending)

    def _forget_retired_sessions(self) -> None:
        """Once every retired session is connected, unsubscribed, has all it received
        acknowledged and got nothing for RETIRED_IDLE_S, the record of them goes: the next
        start opens only `sessions`."""
        pending = self._retired_pending
        if not pending:
            return
        now = time.monotonic()
        seen = []
        for i in sorted(pending):
            received, qos1 = self.stats.session_received(i)
            seen.append((received, qos1 - self._retired_acked[i]))
        counts = tuple(seen)
        busy = not pending <= self._subscribed or any(unacked for _, unacked in counts)
        if busy or counts != self._retired_seen:
            self._retired_seen, self._retired_since = counts, now
            return
        if now - self._retired_since < RETIRED_IDLE_S:
            return
        if self._sessions_file is not None:
            try:
                _write_sessions_used(self._sessions_file, self.settings.sessions)
            except OSError as exc:  # tried again at the next start
                log.warning("event=ingest_sessions_record_failed error=%s", kv(exc))
        log.info("event=ingest_sessions_retired count=%d", len(pending))
        self._retired_pending = set()

    def _run(self) -> None:
        if self._journal is not None and not self._open_journal(self._journal):
            return
        while not self._abandon.is_set():
            self._keep_partitions()
            self._forget_retired_sessions()
            collected = self._collect()
            if collected is None:
                return
            received, position = collected
            try:
                if received or position is not None:
                    self._process(received, position)
            except Exception:  # the writer must outlive any one batch
                log.exception("event=ingest_batch_failed size=%d", len(received))

    def _keep_partitions(self) -> None:
        """PostgreSQL: daily detection partitions exist ahead of the data (hourly check)."""
        now = time.monotonic()
        if self._partitions_checked and now - self._partitions_checked < PARTITION_CHECK_S:
            return
        self._partitions_checked = now
        try:
            with self.sessions() as session, session.begin():
                ensure_partitions(session, self._clock(), self.settings.partition_days_ahead)
        except Exception:  # rows land in the default partition meanwhile: nothing is lost
            log.exception("event=partitions_check_failed")

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

    def _process(self, received: Sequence[Received], position: Position | None) -> None:
        accepted = self._decode(received)
        started = time.perf_counter()
        result = self._commit(accepted, position)
        if result is None:
            # abandoned: nothing is acknowledged, the broker keeps the messages (the journal
            # keeps its own: the database still has the position before them)
            return
        stored, kept = result
        committed = time.time()
        if position is not None and self._journal is not None:
            self._journal.consumed(position)
        acks = [(i.session, i.mid) for i in received if i.qos > 0 and not i.journaled]
        self._receiver.ack(acks)
        self.stats.count_acked(len(acks))
        self._note_retired_acks(acks)
        self.stats.count_batch(
            stored,
            (time.perf_counter() - started) * 1000.0,
            committed - min((item.at for item in received), default=committed),
            [max(0.0, committed - a.message.ts) for a in kept],
        )
        for hook in self.hooks:
            try:
                hook.after_commit(kept)
            except Exception:
                log.exception("event=ingest_hook_failed hook=%s", type(hook).__name__)

    def _write(
        self, batch: Sequence[Accepted], position: Position | None
    ) -> tuple[Counter[str], list[Accepted]]:
        dropped = 0
        try:
            with self.sessions() as session, session.begin():
                kept: list[Accepted] = []
                stored: Counter[str] = Counter()
                if batch:
                    kept, dropped = drop_misaddressed(session, batch)
                    stored = write_batch(session, kept, self._clock(), self._state)
                    for hook in self.hooks:
                        hook.in_transaction(session, kept)
                if position is not None and self._journal is not None:
                    save_journal_position(
                        session, self._journal.id, position.segment, position.offset, self._clock()
                    )
        except Exception:
            self._state.forget([a.device for a in batch])
            raise
        if dropped:
            self.stats.count_rejected("misaddressed", dropped)
            log.warning("event=ingest_rejected code=misaddressed count=%d", dropped)
        return stored, kept

    def _commit(
        self, batch: Sequence[Accepted], position: Position | None = None
    ) -> tuple[Counter[str], list[Accepted]] | None:
        """Write (and move the journal's stored position) with retries; None when abandoned.

        Unstorable messages are dropped."""
        delay = 0.05
        while True:
            try:
                return self._write(batch, position)
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
                if not batch:
                    raise  # the journal position alone cannot be stored: a bug, not data
                if len(batch) == 1:
                    # The same input would fail forever: drop it, loudly, and go on.
                    self.stats.count_rejected("unstorable")
                    log.error("event=ingest_unstorable error=%s", kv(_short(exc)))
                    return self._commit([], position) if position is not None else (Counter(), [])
                total: Counter[str] = Counter()
                kept: list[Accepted] = []
                for item in batch:
                    one = self._commit([item])
                    if one is None:
                        return None
                    total.update(one[0])
                    kept.extend(one[1])
                if position is not None and self._commit([], position) is None:
                    return None
                return total, kept


def _read_sessions_used(path: Path | None) -> int:
    if path is None:
        return 0
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return 0
    return int(text) if text.isdigit() else 0


def _write_sessions_used(path: Path, count: int) -> None:
    """Raises OSError."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{count}\n")
    os.replace(tmp, path)


def _short(exc: BaseException) -> str:
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        return f"{type(exc.orig).__name__}: {exc.orig}".splitlines()[0]
    return f"{type(exc).__name__}: {exc}".splitlines()[0]
