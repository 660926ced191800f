"""Serving bundle chunks over MQTT: requests close together are merged into one pass.

One publish on a bundle's chunk topic reaches every agent subscribed to it, so chunks that
several agents lack go out once.

Delivery at fleet size (measured with `bench/rollout.py` and the simulator): mosquitto keeps a
copy of each chunk for every subscriber that has not read it yet, so with readers slower than
the sender its memory grew as bundle × devices (7 GB with 200 simulated devices taking a
20 MB bundle at once). Two bounds hold it to a window of chunks per device instead (17 MB
peak for 1,000 devices in waves up to 500):

- the broker's per-client limits (`max_inflight_messages`, `max_queued_messages`,
  `max_queued_bytes`: `controller.settings.BROKER_DELIVERY_LIMITS`, in the demo broker's and
  the production configuration): a reader further behind than its window loses the chunks past
  it, and asks for them again (the agent's `chunk_request` on a stall), served by a later
  pass that every other laggard shares;
- a paced broadcast (`send_rate`, bytes per second, 0 for none): a pass goes out no faster
  than the slowest links it should carry are expected to read, so those readers stay inside
  their window and one pass serves a whole wave. Readers slower still fall back on the
  windows above and a later pass, not on more broker memory.

Unicast HTTP for laggards was left out: every byte of it comes from the controller once per
device, which is what the broadcast is there to avoid.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence

from controller.bundles.repository import BundleInfo, BundleRepository
from controller.mqtt.ingest import kv
from controller.mqtt.session import Publisher, PublishError
from protocol.codec import encode_chunk
from protocol.topics import Topics

log = logging.getLogger(__name__)

# a device may have a bundle sent this many times over per window; resumes and a few lost
# chunks fit easily, a forged request loop does not
DEFAULT_PASSES_PER_WINDOW = 3
DEFAULT_LIMIT_WINDOW_S = 600.0
# (device, bundle) pairs remembered; the least recently asking pair is forgotten first
DEFAULT_LIMIT_ENTRIES = 10_000


class ChunkRateLimit:
    """How many chunks of one bundle each device may still be sent in the current window.

    The table is bounded: past `max_entries` pairs the least recently seen is dropped (and
    counted), so a flood of made-up device ids costs memory no more than that."""

    def __init__(
        self,
        passes: int = DEFAULT_PASSES_PER_WINDOW,
        window_s: float = DEFAULT_LIMIT_WINDOW_S,
        max_entries: int = DEFAULT_LIMIT_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.passes = passes
        self.window_s = window_s
        self.max_entries = max_entries
        self._clock = clock
        # (device, digest) -> (window start, chunks granted in it)
        self._granted: OrderedDict[tuple[str, str], tuple[float, int]] = OrderedDict()
        self.evicted = 0

    def grant(self, device: str, bundle: BundleInfo, wanted: int) -> int:
        """How many of `wanted` chunks may go to `device` now (counted as sent)."""
        key = (device, bundle.digest)
        now = self._clock()
        start, used = self._granted.pop(key, (now, 0))
        if now - start >= self.window_s:
            start, used = now, 0
        allowed = max(0, min(wanted, self.passes * bundle.chunks - used))
        self._granted[key] = (start, used + allowed)
        while len(self._granted) > self.max_entries:
            self._granted.popitem(last=False)
            self.evicted += 1
        return allowed

    def __len__(self) -> int:
        return len(self._granted)


class ChunkServer:
    """Publishes requested chunks of stored bundles, merging requests that come close together."""

    def __init__(
        self,
        publisher: Publisher,
        store: BundleRepository,
        topics: Topics,
        coalesce_s: float,
        *,
        limit: ChunkRateLimit | None = None,
        send_rate: float = 0.0,
    ) -> None:
        self.publisher = publisher
        self.store = store
        self.topics = topics
        self.coalesce_s = coalesce_s
        # bytes per second of one pass (0: as fast as the broker takes them)
        self.send_rate = send_rate
        self._cond = threading.Condition()
        self._wanted: dict[str, set[int]] = {}
        self._since: dict[str, float] = {}
        self._bundles: dict[str, BundleInfo] = {}
        self._sending: dict[str, set[int]] = {}
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.passes = 0
        self.chunks_sent = 0
        self.bytes_sent = 0
        self.limit = limit if limit is not None else ChunkRateLimit()
        # requests cut short by the per-device limit, and the chunks they did not get
        self.requests_limited = 0
        self.chunks_limited = 0

    def start(self) -> ChunkServer:
        self._thread = threading.Thread(target=self._run, name="chunk-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread:
            self._thread.join(10)

    def request(
        self, bundle: BundleInfo, ranges: Iterable[tuple[int, int]], device: str | None = None
    ) -> int:
        """Queue chunks `start..end` (inclusive) of `bundle`; returns how many were added.

        With `device`, at most the rate limit's share of the bundle goes out for that device."""
        with self._cond:
            wanted = self._wanted.setdefault(bundle.digest, set())
            in_pass = self._sending.get(bundle.digest, set())
            asked: set[int] = set()
            for start, end in ranges:
                # chunks still ahead in the running pass reach this subscriber too
                asked.update(
                    i
                    for i in range(start, min(end, bundle.chunks - 1) + 1)
                    if i not in in_pass and i not in wanted
                )
            if device is not None and asked:
                allowed = self.limit.grant(device, bundle, len(asked))
                if allowed < len(asked):
                    self.requests_limited += 1
                    self.chunks_limited += len(asked) - allowed
                    log.warning(
                        "event=chunk_request_limited device=%s bundle=%s asked=%d allowed=%d",
                        device,
                        bundle.digest[:12],
                        len(asked),
                        allowed,
                    )
                    asked = set(sorted(asked)[:allowed])
            wanted.update(asked)
            added = len(asked)
            if not wanted:
                del self._wanted[bundle.digest]
                return 0
            self._bundles[bundle.digest] = bundle
            self._since.setdefault(bundle.digest, time.monotonic())
            self._cond.notify_all()
            return added

    def _next(self) -> tuple[BundleInfo, list[int]] | None:
        with self._cond:
            while not self._stopping:
                now = time.monotonic()
                due = [(t + self.coalesce_s, d) for d, t in self._since.items()]
                if due:
                    at, digest = min(due)
                    if at <= now:
                        del self._since[digest]
                        indices = sorted(self._wanted.pop(digest))
                        self._sending[digest] = set(indices)
                        return self._bundles[digest], indices
                    self._cond.wait(at - now)
                else:
                    self._cond.wait()
            return None

    def _run(self) -> None:
        while (job := self._next()) is not None:
            bundle, indices = job
            try:
                self._send(bundle, indices)
            except (PublishError, OSError, LookupError) as exc:
                log.error("event=chunk_pass_failed bundle=%s error=%s", bundle.digest[:12], kv(exc))
            finally:
                with self._cond:
                    self._sending.pop(bundle.digest, None)

    def _send(self, bundle: BundleInfo, indices: Sequence[int]) -> None:
        topic = self.topics.bundle_chunks(bundle.digest)
        with self._cond:
            # counted when it starts, like the chunks below, so no reader sees it lag
            self.passes += 1
        paced_until = time.monotonic()
        with self.store.path(bundle.digest).open("rb") as src:
            for index in indices:
                paced_until = self._pace(paced_until, bundle.chunk_size)
                src.seek(index * bundle.chunk_size)
                data = src.read(bundle.chunk_size)
                with self._cond:
                    # counted before the publish: a subscriber may hold the chunk before
                    # publish() returns, and must not see a count that lags behind it
                    self.chunks_sent += 1
                    self.bytes_sent += len(data)
                self.publisher.publish(topic, encode_chunk(index, bundle.chunks, data))
                with self._cond:
                    self._sending[bundle.digest].discard(index)
        log.info("event=chunks_sent bundle=%s count=%d", bundle.digest[:12], len(indices))

    def _pace(self, until: float, size: int) -> float:
        """Wait until `until` when the pass is paced; returns when the next chunk may go."""
        rate = self.send_rate
        if rate <= 0:
            return until
        now = time.monotonic()
        if until > now:
            time.sleep(until - now)
        return max(until, now) + size / rate
