"""Serving bundle chunks over MQTT: requests close together are merged into one pass.

One publish on a bundle's chunk topic reaches every agent subscribed to it, so chunks that
several agents lack go out once.

Delivery at fleet size (measured with `bench/rollout.py` and the simulator): mosquitto keeps a
copy of each chunk for every subscriber that has not read it yet, so with readers slower than
the sender its memory grew as bundle × devices (7 GB with 200 simulated devices taking a
20 MB bundle at once). Three bounds hold it to a window of chunks per device instead:

- the broker's per-client limits (`max_inflight_messages`, `max_queued_messages`,
  `max_queued_bytes`: `controller.settings.BROKER_DELIVERY_LIMITS`, in the demo broker's and
  the production configuration): a reader further behind than its window loses the chunks past
  it, and asks for them again (the agent's `chunk_request` on a stall), served by a later
  pass that every other laggard shares;
- a reader window (`reader_window`, `readers_budget`, bytes): a pass publishes the next chunk
  only while every reader of it is less than its window behind, by what the reader reports of
  its progress (agents report every `ota.transfer.PROGRESS_STEP_BYTES`). Each reader's window
  is the budget shared out among all readers, at most `reader_window`, which sits below the
  broker's per-client queue: readers stay inside their queue, the broker drops nothing and
  holds at most the budget, and one pass serves a whole wave at the pace of its slowest
  reader, whatever the links and however loaded the devices. A reader that holds a pass up
  for `reader_hold_s` (offline, or slower than anyone should wait for) stops holding it, and
  falls back on the per-client limits and a later pass; a device may do that `MAX_HOLDS`
  times per bundle, so asking again and again cannot stall a wave for ever.
  `bench/rollout.py` (1,000 devices, a 20 MB bundle, 10 % reading at a tenth of the others'
  speed): a fixed pace sent 2.84 bundles per wave and the broker peaked at 1,074 MB; the
  window sent 1.14 with a peak of 19 MB;
- a paced broadcast (`send_rate`, bytes per second, 0 for none): a ceiling on a pass.

Unicast HTTP for laggards was left out: every byte of it comes from the controller once per
device, which is what the broadcast is there to avoid.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from controller.bundles.repository import BundleInfo, BundleRepository
from controller.mqtt.ingest import kv
from controller.mqtt.session import Publisher, PublishError
from protocol.codec import encode_chunk
from protocol.topics import Topics

log = logging.getLogger(__name__)

# a pass waits at most this many coalescing times after the first request it gathers
COALESCE_STRETCH = 20
# a device may have a bundle sent this many times over per window; resumes and a few lost
# chunks fit easily, a forged request loop does not
DEFAULT_PASSES_PER_WINDOW = 3
DEFAULT_LIMIT_WINDOW_S = 600.0
# (device, bundle) pairs remembered; the least recently asking pair is forgotten first
DEFAULT_LIMIT_ENTRIES = 10_000
# how far a reader may fall behind a pass: below mosquitto's max_queued_bytes per client
# (controller.settings.BROKER_DELIVERY_LIMITS, 4 MB), by more than one progress step
DEFAULT_READER_WINDOW_BYTES = 3 << 20
# what all readers together may be behind: mosquitto keeps a copy of each chunk per reader
# that has not read it, so this bounds the broker's memory for a whole wave (500 readers of
# one pass get 0.6 MiB each)
DEFAULT_READERS_BUDGET_BYTES = 320 << 20
# how long one reader may hold a pass up before the pass goes on without it, and how many
# times per bundle: a device that asks again and again cannot stall a wave more than that
DEFAULT_READER_HOLD_S = 5.0
MAX_HOLDS = 2
# readers remembered at most (one per device reading a bundle), and how long a silent one is
DEFAULT_MAX_READERS = 100_000
READER_FORGET_S = 900.0


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


@dataclass
class _Reader:
    """One device reading a bundle's chunks, as far as its requests and reports tell."""

    chunks: int
    wanted: bytearray  # 1 where it lacked the chunk when it asked, and it has not gone out since
    base: int  # chunks it had when it asked
    have: int  # chunks it has, by its latest report
    heard: float
    sent: int = 0  # chunks it lacked that went out since it asked
    holding: bool = True
    held_since: float | None = None
    releases: int = 0  # times it held a pass up too long, carried over when it asks again

    @property
    def behind(self) -> int:
        """Chunks sent for it that it has not reported yet."""
        return self.sent - (self.have - self.base)


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
        reader_window: int = DEFAULT_READER_WINDOW_BYTES,
        readers_budget: int = DEFAULT_READERS_BUDGET_BYTES,
        reader_hold_s: float = DEFAULT_READER_HOLD_S,
        max_readers: int = DEFAULT_MAX_READERS,
    ) -> None:
        self.publisher = publisher
        self.store = store
        self.topics = topics
        self.coalesce_s = coalesce_s
        # bytes per second of one pass (0: as fast as the broker takes them)
        self.send_rate = send_rate
        self._cond = threading.Condition()
        self._wanted: dict[str, set[int]] = {}
        self._since: dict[str, float] = {}  # first request gathered for the next pass
        self._latest: dict[str, float] = {}  # latest device that joined it
        self._gathered: dict[str, set[str]] = {}  # the devices that did
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
        # bytes a reader may be behind a pass (0: no window)
        self.reader_window = reader_window
        # bytes all readers may be behind together: each gets its share, within its window
        self.readers_budget = readers_budget
        self.reader_hold_s = reader_hold_s
        self.max_readers = max_readers
        self._readers: dict[str, dict[str, _Reader]] = {}
        # readers that stopped holding passes up, and seconds passes waited for readers
        self.readers_released = 0
        self.window_wait_s = 0.0

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

        With `device`, at most the rate limit's share of the bundle goes out for that device,
        and the device is a reader that passes keep within their window from now on."""
        with self._cond:
            if device is not None and self.reader_window > 0:
                self._join(device, bundle, ranges)
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
            now = time.monotonic()
            self._since.setdefault(bundle.digest, now)
            # each device that joins, even one whose chunks were already asked for; not one
            # asking again while it waits, which would hold the pass back for ever
            gathered = self._gathered.setdefault(bundle.digest, set())
            if device is None or device not in gathered:
                if device is not None:
                    gathered.add(device)
                self._latest[bundle.digest] = now
            self._cond.notify_all()
            return added

    def progress(self, device: str, digest: str, fraction: float) -> None:
        """A reader's report of how much of the bundle it has (0..1)."""
        with self._cond:
            reader = self._readers.get(digest, {}).get(device)
            if reader is None:
                return
            have = min(reader.chunks, max(0, round(fraction * reader.chunks)))
            if have >= reader.chunks:
                self._leave(device, digest)
            else:
                reader.have = max(reader.have, have)
                reader.heard = time.monotonic()
            self._cond.notify_all()

    def finished(self, device: str, digest: str) -> None:
        """The device is done reading the bundle (it has it, or it gave up)."""
        with self._cond:
            if self._leave(device, digest):
                self._cond.notify_all()

    @property
    def readers(self) -> int:
        with self._cond:
            return sum(len(r) for r in self._readers.values())

    def _join(self, device: str, bundle: BundleInfo, ranges: Iterable[tuple[int, int]]) -> None:
        """Start (again) counting what goes out for `device` against what it reports."""
        wanted = bytearray(bundle.chunks)
        for start, end in ranges:
            lo, hi = max(0, start), min(end, bundle.chunks - 1)
            if lo <= hi:
                wanted[lo : hi + 1] = b"\x01" * (hi - lo + 1)
        had = bundle.chunks - wanted.count(1)
        readers = self._readers.setdefault(bundle.digest, {})
        before = readers.pop(device, None)
        releases = before.releases if before is not None else 0
        readers[device] = _Reader(
            bundle.chunks,
            wanted,
            had,
            had,
            time.monotonic(),
            holding=releases < MAX_HOLDS,
            releases=releases,
        )
        if self.readers > self.max_readers:
            self._forget(time.monotonic(), keep=self.max_readers)

    def _leave(self, device: str, digest: str) -> bool:
        readers = self._readers.get(digest)
        if readers is None or readers.pop(device, None) is None:
            return False
        if not readers:
            del self._readers[digest]
        return True

    def _forget(self, now: float, keep: int | None = None) -> None:
        """Drop readers silent for READER_FORGET_S, and past `keep` the longest silent."""
        everyone = sorted(
            (
                (r.heard, digest, device)
                for digest, rs in self._readers.items()
                for device, r in rs.items()
            )
        )
        excess = len(everyone) - keep if keep is not None else 0
        for i, (heard, digest, device) in enumerate(everyone):
            if i >= excess and now - heard < READER_FORGET_S:
                break
            self._leave(device, digest)

    def _hold(self, bundle: BundleInfo) -> None:
        """Wait while a reader of `bundle` is a window behind; called before each chunk."""
        if self.reader_window <= 0:
            return
        started = time.monotonic()
        with self._cond:
            while not self._stopping:
                now = time.monotonic()
                holding = sum(r.holding for rs in self._readers.values() for r in rs.values())
                window = self.reader_window
                if self.readers_budget > 0 and holding:
                    window = min(window, self.readers_budget // holding)
                limit = max(1, window // bundle.chunk_size)
                wait = self._hold_for(bundle.digest, limit, now)
                if wait is None:
                    break
                self._cond.wait(wait)
            self.window_wait_s += time.monotonic() - started

    def _hold_for(self, digest: str, limit: int, now: float) -> float | None:
        """Seconds to wait for the readers a window behind, or None to send now."""
        wait: float | None = None
        for device, reader in self._readers.get(digest, {}).items():
            if not reader.holding or reader.behind < limit:
                reader.held_since = None
                continue
            if reader.held_since is None:
                reader.held_since = now
            # holding it too long (offline, or slower than anyone should wait for): it goes on
            waited = now - reader.held_since
            if waited >= self.reader_hold_s:
                reader.holding = False
                reader.releases += 1
                self.readers_released += 1
                log.info(
                    "event=chunk_reader_released device=%s bundle=%s behind=%d waited_s=%.1f",
                    device,
                    digest[:12],
                    reader.behind,
                    waited,
                )
                continue
            left = self.reader_hold_s - waited
            wait = left if wait is None else min(wait, left)
        return wait

    def _next(self) -> tuple[BundleInfo, list[int]] | None:
        with self._cond:
            while not self._stopping:
                now = time.monotonic()
                # a pass starts once no device joined it for the coalescing time (a wave's
                # deploys go out over a second or more), or COALESCE_STRETCH times that after
                # the first request
                due = [
                    (
                        min(
                            t + self.coalesce_s * COALESCE_STRETCH,
                            self._latest.get(d, t) + self.coalesce_s,
                        ),
                        d,
                    )
                    for d, t in self._since.items()
                ]
                if due:
                    at, digest = min(due)
                    if at <= now:
                        self._forget(now)
                        del self._since[digest]
                        self._latest.pop(digest, None)
                        self._gathered.pop(digest, None)
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
                self._hold(bundle)
                src.seek(index * bundle.chunk_size)
                data = src.read(bundle.chunk_size)
                with self._cond:
                    # counted before the publish: a subscriber may hold the chunk before
                    # publish() returns, and must not see a count that lags behind it
                    self.chunks_sent += 1
                    self.bytes_sent += len(data)
                    for reader in self._readers.get(bundle.digest, {}).values():
                        if reader.wanted[index]:
                            reader.wanted[index] = 0
                            reader.sent += 1
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
