"""Serving bundle chunks over MQTT: requests close together are merged into one pass.

One publish on a bundle's chunk topic reaches every agent subscribed to it, so chunks that
several agents lack go out once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence

from controller.bundles.repository import BundleInfo, BundleRepository
from controller.mqtt.ingest import kv
from controller.mqtt.session import Publisher, PublishError
from protocol.codec import encode_chunk
from protocol.topics import Topics

log = logging.getLogger(__name__)


class ChunkServer:
    """Publishes requested chunks of stored bundles, merging requests that come close together."""

    def __init__(
        self, publisher: Publisher, store: BundleRepository, topics: Topics, coalesce_s: float
    ) -> None:
        self.publisher = publisher
        self.store = store
        self.topics = topics
        self.coalesce_s = coalesce_s
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

    def request(self, bundle: BundleInfo, ranges: Iterable[tuple[int, int]]) -> int:
        """Queue chunks `start..end` (inclusive) of `bundle`; returns how many were added."""
        with self._cond:
            wanted = self._wanted.setdefault(bundle.digest, set())
            in_pass = self._sending.get(bundle.digest, set())
            before = len(wanted)
            for start, end in ranges:
                # chunks still ahead in the running pass reach this subscriber too
                wanted.update(
                    i for i in range(start, min(end, bundle.chunks - 1) + 1) if i not in in_pass
                )
            added = len(wanted) - before
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
        with self.store.path(bundle.digest).open("rb") as src:
            for index in indices:
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
