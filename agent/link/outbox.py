"""The outbox: a bounded on-disk queue (SQLite, WAL) for every message that must not be lost.

Detection and deployment events are written here first and published from here, oldest
first; a row is deleted only when the broker acknowledged it (QoS 1 PUBACK), so broker
outages and agent restarts lose nothing and replay in order. The controller drops the
duplicates a restart can cause by message id.

Policy when full: the oldest rows are dropped (counted, persisted, reported in health), so
a device that stays offline for too long keeps its most recent data. Rows older than
`max_age_s` are dropped the same way.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    row INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_outbox_created ON outbox (created);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS journal (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL);
"""


class OutboxError(Exception):
    """The outbox's database cannot be opened or written (disk full, corrupt file)."""


class OutboxSettings(BaseModel):
    """Bounds and behaviour of the agent's outbox."""

    model_config = ConfigDict(extra="forbid")

    path: Path | None = Field(None, description="SQLite file; default data_dir/outbox.sqlite")
    max_rows: Annotated[int, Field(ge=1)] = Field(100_000, description="messages kept at most")
    max_bytes: Annotated[int, Field(ge=1024)] = Field(
        64 << 20, description="payload bytes kept at most"
    )
    max_age_s: Annotated[float, Field(gt=0)] = Field(
        7 * 86400.0, description="messages older than this are dropped unsent"
    )
    max_inflight: Annotated[int, Field(ge=1, le=1000)] = Field(
        20, description="messages published and not yet acknowledged, at most"
    )
    retry_s: Annotated[float, Field(gt=0, le=3600)] = Field(
        30.0, description="publish again when no acknowledgement came after this long"
    )
    journal: bool = Field(
        False, description="also record the id of every message put (audits and tests)"
    )


@dataclass(frozen=True)
class OutboxItem:
    row: int
    topic: str
    payload: bytes
    created: float


class Outbox:
    """The queue itself; thread-safe, one SQLite connection behind a lock."""

    def __init__(
        self,
        path: Path,
        settings: OutboxSettings | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings or OutboxSettings()
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.Lock()
        self.on_put: Callable[[], None] = lambda: None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives a process kill; only power loss may cost the last commits
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            rows, size = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox"
            ).fetchone()
            dropped = self._db.execute("SELECT value FROM meta WHERE key = 'dropped'").fetchone()
        except sqlite3.Error as exc:
            raise OutboxError(f"cannot open outbox {self.path}: {exc}") from exc
        self._rows = int(rows)
        self._bytes = int(size)
        self.dropped = int(dropped[0]) if dropped else 0

    @property
    def depth(self) -> int:
        return self._rows

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def put(self, topic: str, payload: bytes, ids: Sequence[str] = ()) -> None:
        """Store one message (and, with the journal on, the ids it carries); raises OutboxError."""
        self.put_many([(topic, payload, ids)])

    def put_many(self, items: Sequence[tuple[str, bytes, Sequence[str]]]) -> None:
        """Store several messages in one transaction; raises OutboxError."""
        if not items:
            return
        now = self._clock()
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany(
                    "INSERT INTO outbox (topic, payload, created) VALUES (?, ?, ?)",
                    [(topic, payload, now) for topic, payload, _ in items],
                )
                if self.settings.journal:
                    self._db.executemany(
                        "INSERT INTO journal (id) VALUES (?)",
                        [(i,) for _, _, ids in items for i in ids],
                    )
                self._rows += len(items)
                self._bytes += sum(len(p) for _, p, _ in items)
                self._enforce_locked(now)
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._db.execute("ROLLBACK")
                self._recount_locked()
                raise OutboxError(f"cannot write outbox {self.path}: {exc}") from exc
        self.on_put()

    def oldest(self, limit: int, skip: Collection[int] = ()) -> list[OutboxItem]:
        """Up to `limit` messages, oldest first, leaving out rows in `skip` (already in flight)."""
        with self._lock:
            self._expire_locked(self._clock())
            # in-flight rows are few and the oldest, so reading past them is cheap
            found = self._db.execute(
                "SELECT row, topic, payload, created FROM outbox ORDER BY row LIMIT ?",
                (limit + len(skip),),
            ).fetchall()
        items = [OutboxItem(int(r), str(t), bytes(p), float(c)) for r, t, p, c in found]
        return [i for i in items if i.row not in skip][:limit]

    def delete(self, rows: Collection[int]) -> None:
        """Forget acknowledged rows (rows already gone are ignored)."""
        with self._lock:
            for row in rows:
                gone = self._db.execute(
                    "DELETE FROM outbox WHERE row = ? RETURNING LENGTH(payload)", (row,)
                ).fetchall()
                self._rows -= len(gone)
                self._bytes -= sum(int(g[0]) for g in gone)

    def journal_ids(self) -> list[str]:
        """Every id recorded by `put` with the journal on, in the order they were put."""
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT id FROM journal ORDER BY seq")]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ---- bounds ---------------------------------------------------------------------------

    def _enforce_locked(self, now: float) -> None:
        self._expire_locked(now)
        s = self.settings
        while self._rows > s.max_rows or self._bytes > s.max_bytes:
            # the row bound in one statement, then one at a time for the byte bound
            count = max(1, self._rows - s.max_rows)
            gone = self._db.execute(
                "DELETE FROM outbox WHERE row IN (SELECT row FROM outbox ORDER BY row LIMIT ?)"
                " RETURNING LENGTH(payload)",
                (count,),
            ).fetchall()
            if not gone:
                self._recount_locked()
                break
            self._dropped_locked(gone, "full")

    def _expire_locked(self, now: float) -> None:
        gone = self._db.execute(
            "DELETE FROM outbox WHERE created < ? RETURNING LENGTH(payload)",
            (now - self.settings.max_age_s,),
        ).fetchall()
        if gone:
            self._dropped_locked(gone, "expired")

    def _dropped_locked(self, gone: list[tuple[int]], why: str) -> None:
        self._rows -= len(gone)
        self._bytes -= sum(int(g[0]) for g in gone)
        self.dropped += len(gone)
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES ('dropped', ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (self.dropped,),
        )
        log.warning(
            "event=outbox_dropped reason=%s count=%d total=%d", why, len(gone), self.dropped
        )

    def _recount_locked(self) -> None:
        rows, size = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox"
        ).fetchone()
        self._rows, self._bytes = int(rows), int(size)


Publish = Callable[[str, bytes], int]


class OutboxPump:
    """Publishes the outbox oldest first while connected, with a cap on messages in flight.

    `publish(topic, payload)` returns the paho message id; the session reports each PUBACK
    with `acked(mid)` from its network thread. Only the pump's own thread maps ids to rows,
    so the network thread never waits on the database.
    """

    def __init__(self, outbox: Outbox, publish: Publish, connected: threading.Event) -> None:
        self.outbox = outbox
        self._publish = publish
        self._connected = connected
        self._acks: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._by_mid: dict[int, int] = {}
        self._sent_at: dict[int, tuple[int, float]] = {}  # row -> (mid, monotonic time)
        self.published = 0
        self.acknowledged = 0
        outbox.on_put = self._wake.set
        self._thread = threading.Thread(target=self._run, name="outbox-pump", daemon=True)

    @property
    def inflight(self) -> int:
        return len(self._sent_at)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def acked(self, mid: int) -> None:
        """A PUBACK came for `mid` (called on paho's network thread)."""
        self._acks.put(mid)
        self._wake.set()

    def flush(self, timeout: float) -> bool:
        """Wait until the outbox is empty; True when it is, False after `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.outbox.depth == 0:
                return True
            self._idle.clear()
            self._wake.set()
            self._idle.wait(min(0.2, max(0.0, deadline - time.monotonic())))
        return self.outbox.depth == 0

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=0.5)
            self._wake.clear()
            try:
                self._settle()
                if self._connected.is_set():
                    self._send()
            except OutboxError as exc:
                log.error("event=outbox_error error=%r", str(exc))
            except Exception:  # the pump must outlive one bad message
                log.exception("event=outbox_pump_error")
            self._idle.set()

    def _settle(self) -> None:
        done: list[int] = []
        while True:
            try:
                mid = self._acks.get_nowait()
            except queue.Empty:
                break
            row = self._by_mid.pop(mid, None)
            if row is not None and self._sent_at.pop(row, None) is not None:
                done.append(row)
        if done:
            self.outbox.delete(done)
            self.acknowledged += len(done)
        # no PUBACK for too long (the broker lost it): let the row go out again
        cutoff = time.monotonic() - self.outbox.settings.retry_s
        for row, (mid, sent) in list(self._sent_at.items()):
            if sent < cutoff:
                del self._sent_at[row]
                self._by_mid.pop(mid, None)

    def _send(self) -> None:
        room = self.outbox.settings.max_inflight - len(self._sent_at)
        if room <= 0:
            return
        for item in self.outbox.oldest(room, skip=self._sent_at.keys()):
            try:
                mid = self._publish(item.topic, item.payload)
            except ValueError as exc:  # paho refuses it (too large, bad topic): it never will go
                log.error("event=outbox_unsendable row=%d error=%r", item.row, str(exc))
                self.outbox.delete([item.row])
                continue
            self._by_mid[mid] = item.row
            self._sent_at[item.row] = (mid, time.monotonic())
            self.published += 1
