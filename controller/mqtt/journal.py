"""The ingest's journal: received messages on local disk before the broker is acknowledged.

A broker lets each session hold only a window of unacknowledged QoS 1 messages, and queues the
rest for it only up to its own limit (mosquitto: `max_queued_bytes`), past which it drops them.
Acknowledging after the database commit made every slow stretch of the database (a checkpoint,
a vacuum, a busy neighbour, tables passing millions of rows) a race against that limit: at
10,000 devices one replica's eight sessions overflowed after about 6 s behind.

With the journal, a message is acknowledged once it is in a segment file and `fdatasync`ed
(group commit: one sync per 10 ms at most, for whatever arrived meanwhile). The
writer drains the journal into the database in its own time, in larger batches when it is
behind, and the backlog lives on disk instead of in the broker or in memory. Where the writer
stands is stored in the database in the same transaction as the rows it wrote (table
`ingest_journal`), so after a crash every journalled message is stored exactly once.

Files: `<dir>/journal.id` (this journal's identity, the key of its position in the database)
and segments `<dir>/<16-digit number>.seg`, appended only, never rewritten; a process starts
a new segment, so a torn tail left by a crash is only ever read, never appended to. Each record
is `<length u32><crc32 u32>` then `<received at f64><qos u8><topic length u16>`, the topic and
the payload. A record that is cut short or fails its checksum ends its segment: nothing after
it in that segment was synced, so nothing after it was acknowledged.

The journal refuses appends (the caller acknowledges after the commit instead, as without a
journal) while its backlog is over `max_bytes`, and for a while after a write fails (a full
disk): the broker holds messages again then, as it did before the journal.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import queue
import struct
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

RECORD = struct.Struct("<II")
"""Record head: body length, crc32 of the body."""
BODY = struct.Struct("<dBH")
"""Body head: received at (epoch seconds), qos, topic length; then topic, then payload."""
SEGMENT_SUFFIX = ".seg"
ID_FILE = "journal.id"
LOCK_FILE = "journal.lock"
RETRY_AFTER_FAILURE_S = 5.0
SYNC_INTERVAL_S = 0.01
"""At most one sync per this many seconds: acknowledgements wait up to that long."""
READ_CHUNK = 1 << 20
WRITEV_MAX = 512
"""Records per writev call (the system's limit is 1,024 buffers)."""


class JournalBusy(RuntimeError):
    """Another process holds the journal's folder."""


@dataclass(frozen=True, order=True)
class Position:
    """A place in the journal: segment number and byte offset in it."""

    segment: int
    offset: int


@dataclass(frozen=True)
class Entry:
    """One message to journal; `token` is the caller's, handed back once it is durable."""

    topic: str
    payload: bytes
    qos: int
    at: float
    token: object = None


@dataclass(frozen=True)
class Record:
    """One message read back from the journal."""

    topic: str
    payload: bytes
    qos: int
    at: float


def encode(entry: Entry) -> bytes:
    topic = entry.topic.encode()
    body = BODY.pack(entry.at, entry.qos, len(topic)) + topic + entry.payload
    return RECORD.pack(len(body), zlib.crc32(body)) + body


def decode(buf: bytes | memoryview, at: int) -> tuple[Record, int] | None:
    """The record at `at` and the offset after it; None when it is cut short or corrupt."""
    if len(buf) - at < RECORD.size:
        return None
    length, crc = RECORD.unpack_from(buf, at)
    start = at + RECORD.size
    end = start + length
    if length < BODY.size or end > len(buf):
        return None
    view = memoryview(buf)[start:end]
    if zlib.crc32(view) != crc:
        return None
    received, qos, topic_len = BODY.unpack_from(view, 0)
    head = BODY.size + topic_len
    if head > length:
        return None
    try:
        topic = bytes(view[BODY.size : head]).decode()
    except UnicodeDecodeError:
        return None
    return Record(topic, bytes(view[head:]), qos, received), end


def _segment_name(number: int) -> str:
    return f"{number:016d}{SEGMENT_SUFFIX}"


class Journal:
    """Appends on its own thread (write, sync, then `on_durable`); the ingest writer reads."""

    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int,
        segment_bytes: int,
        on_durable: Callable[[Sequence[Entry]], None],
        on_failed: Callable[[Sequence[Entry]], None],
        sync_interval_s: float = SYNC_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory = directory
        self.sync_interval_s = sync_interval_s
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self._on_durable = on_durable
        self._on_failed = on_failed
        self._clock = clock
        directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise JournalBusy(
                f"{directory} is in use by another controller process; each replica needs a "
                "data_dir of its own"
            ) from None
        self.id = self._identity()
        self._pending: queue.SimpleQueue[Entry | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        existing = self.segments()
        # appends always go to a new segment: an old one may end in a torn record
        self._segment = (existing[-1] + 1) if existing else 1
        self._fd = -1
        self._offset = 0
        self._durable = Position(self._segment, 0)
        self._durable_bytes = sum(self._size(n) for n in existing)
        self._consumed_bytes = 0
        self._failed_until = 0.0
        self.failures = 0
        self._thread: threading.Thread | None = None
        # the reader (the ingest writer's thread only)
        self._read_at = Position(existing[0] if existing else self._segment, 0)
        self._read_fd = -1
        self._read_fd_segment = 0
        self._read_buf = bytearray(READ_CHUNK)

    # -- files --

    def _identity(self) -> str:
        path = self.directory / ID_FILE
        try:
            text = path.read_text().strip()
            if text:
                return text
        except FileNotFoundError:
            pass
        # the identity keys the stored position: a crash must not leave a journal without it
        value = uuid.uuid4().hex
        tmp = path.with_suffix(".tmp")
        with tmp.open("w") as out:
            out.write(value + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
        self._sync_directory()
        return value

    def _sync_directory(self) -> None:
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def segments(self) -> list[int]:
        """Segment numbers on disk, oldest first."""
        numbers = []
        for path in self.directory.glob(f"*{SEGMENT_SUFFIX}"):
            stem = path.name[: -len(SEGMENT_SUFFIX)]
            if stem.isdigit():
                numbers.append(int(stem))
        return sorted(numbers)

    def _path(self, number: int) -> Path:
        return self.directory / _segment_name(number)

    def _size(self, number: int) -> int:
        try:
            return self._path(number).stat().st_size
        except FileNotFoundError:
            return 0

    # -- appending (the journal's thread) --

    def start(self) -> Journal:
        # the segment to append to exists from the start, so the next process numbers its own
        # after it even when every older one has been stored and removed
        try:
            self._rotate()
        except OSError as exc:
            self._fail([], exc)
        self._thread = threading.Thread(target=self._run, name="ingest-journal", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Sync and hand over what was appended so far, then stop appending."""
        if self._thread is not None:
            self._pending.put(None)
            self._thread.join(timeout)
            if self._thread.is_alive():
                return  # stuck in a write: its thread still owns the file
            self._thread = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def close(self) -> None:
        """Close the reader's file and free the folder; call once the reader is done."""
        if self._read_fd >= 0:
            os.close(self._read_fd)
            self._read_fd = -1
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the lock
            self._lock_fd = -1

    def accepting(self) -> bool:
        """False while the backlog is over `max_bytes` or after a failed write."""
        return self.backlog_bytes() < self.max_bytes and self._clock() >= self._failed_until

    def append(self, entry: Entry) -> None:
        """Queue `entry`; `on_durable` (or `on_failed`) gets it back from the journal's thread."""
        self._pending.put(entry)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._pending.get()
            if first is None:
                stopping = True
                batch: list[Entry] = []
            else:
                batch = [first]
            while True:
                try:
                    more = self._pending.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                else:
                    batch.append(more)
            if batch:
                synced_at = time.monotonic()
                self._write(batch)
                # group commit: what arrives during the pause shares the next sync (a sync per
                # message would cost more CPU than the message's whole storing)
                pause = self.sync_interval_s - (time.monotonic() - synced_at)
                if pause > 0 and not stopping:
                    time.sleep(pause)

    def _write(self, batch: list[Entry]) -> None:
        # records stay small objects, written with writev: one joined buffer of a few hundred
        # kilobytes per sync, sized differently each time, fragments the heap over hours
        records = [encode(entry) for entry in batch]
        size = sum(len(r) for r in records)
        try:
            if self._fd < 0 or self._offset >= self.segment_bytes:
                self._rotate()
            self._write_synced(self._fd, records)
        except OSError as exc:
            self._fail(batch, exc)
            return
        self._offset += size
        with self._lock:
            self._durable = Position(self._segment, self._offset)
            self._durable_bytes += size
        self._on_durable(batch)

    def _write_synced(self, fd: int, records: list[bytes]) -> None:
        """Write all of `records` and sync them; raises OSError (a full disk: ENOSPC)."""
        for at in range(0, len(records), WRITEV_MAX):
            part = records[at : at + WRITEV_MAX]
            written = os.writev(fd, part)
            total = sum(len(r) for r in part)
            if written < total:  # a short write (rare on files): write the rest plainly
                rest = b"".join(part)[written:]
                while rest:
                    rest = rest[os.write(fd, rest) :]
        os.fdatasync(fd)

    def _rotate(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            self._segment += 1
        fd = os.open(self._path(self._segment), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        # the new name must survive a crash before anything in it is acknowledged
        self._sync_directory()
        self._fd = fd
        self._offset = os.fstat(fd).st_size

    def _fail(self, batch: list[Entry], exc: OSError) -> None:
        self.failures += 1
        self._failed_until = self._clock() + RETRY_AFTER_FAILURE_S
        log.error(
            "event=ingest_journal_write_failed segment=%d error=%s retry_in_s=%.0f",
            self._segment,
            errno.errorcode.get(exc.errno or 0, type(exc).__name__),
            RETRY_AFTER_FAILURE_S,
        )
        # what was half written is not acknowledged and not read back: the segment ends here
        if self._fd >= 0:
            try:
                os.ftruncate(self._fd, self._offset)
            except OSError:
                os.close(self._fd)
                self._fd = -1
                self._segment += 1
                with self._lock:
                    self._durable = Position(self._segment, 0)
        self._on_failed(batch)

    # -- reading (the ingest writer's thread) --

    def backlog_bytes(self) -> int:
        """Bytes synced and not yet handed to `consumed`."""
        with self._lock:
            return self._durable_bytes - self._consumed_bytes

    def durable(self) -> Position:
        with self._lock:
            return self._durable

    def seek(self, position: Position | None) -> None:
        """Read from `position` (from the oldest segment when None); drops older segments."""
        segments = self.segments()
        oldest = Position(segments[0] if segments else self._segment, 0)
        if position is not None and position > self.durable():
            # the database is ahead of these files (a folder restored from a backup, say):
            # read all that is here; stored rows are not written twice
            log.warning(
                "event=ingest_journal_position_ahead segment=%d offset=%d",
                position.segment,
                position.offset,
            )
            position = oldest
        if position is None or position.segment < oldest.segment:
            position = oldest
        self._read_at = position
        self.consumed(position)

    def pending(self) -> bool:
        """True when there are synced records not yet read."""
        return self._read_at < self.durable()

    def read(self, limit: int) -> tuple[list[Record], Position]:
        """Up to `limit` records from where reading stands, and the position after them."""
        records: list[Record] = []
        while len(records) < limit:
            durable = self.durable()
            at = self._read_at
            if at >= durable:
                break
            complete = at.segment < durable.segment
            end = self._size(at.segment) if complete else durable.offset
            if at.offset >= end:  # a finished segment read to its end (or never written)
                self._read_at = Position(at.segment + 1, 0)
                continue
            # every record fits in one read: payloads over the ingest's limit are never
            # journalled, and that limit is far below READ_CHUNK
            buf = self._pread(at.segment, min(end - at.offset, READ_CHUNK), at.offset)
            if not buf:  # the segment went away under us (removed by hand)
                self._read_at = Position(at.segment + 1, 0) if complete else durable
                continue
            offset = 0
            while len(records) < limit:
                one = decode(buf, offset)
                if one is None:
                    break
                records.append(one[0])
                offset = one[1]
            if offset == 0 and len(records) < limit:
                # a torn or damaged record: nothing after it in this segment was synced whole
                # (a finished segment), or the disk changed under us (the current one)
                log.warning(
                    "event=ingest_journal_tail_discarded segment=%d offset=%d bytes=%d",
                    at.segment,
                    at.offset,
                    end - at.offset,
                )
                self._read_at = Position(at.segment + 1, 0) if complete else durable
                continue
            self._read_at = Position(at.segment, at.offset + offset)
        return records, self._read_at

    def _pread(self, segment: int, size: int, offset: int) -> memoryview:
        """Up to `size` bytes at `offset`, in one buffer reused by every read (a fresh megabyte
        a read fragments the heap: the process grows)."""
        if self._read_fd_segment != segment or self._read_fd < 0:
            if self._read_fd >= 0:
                os.close(self._read_fd)
                self._read_fd = -1
            try:
                self._read_fd = os.open(self._path(segment), os.O_RDONLY)
            except FileNotFoundError:
                return memoryview(b"")
            self._read_fd_segment = segment
        view = memoryview(self._read_buf)[:size]
        got = os.preadv(self._read_fd, [view], offset)
        return view[:got]

    def consumed(self, position: Position) -> None:
        """Everything before `position` is stored: segments wholly before it are removed."""
        removed = 0
        for number in self.segments():
            if number >= position.segment:
                break
            removed += self._size(number)
            with contextlib.suppress(FileNotFoundError):
                self._path(number).unlink()
        with self._lock:
            self._durable_bytes -= removed
            self._consumed_bytes = position.offset
