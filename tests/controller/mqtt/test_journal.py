"""The ingest journal's files: synced before they are handed back, read back whole, torn
tails and damaged records ended at, old segments removed once stored, limits refused."""

from __future__ import annotations

import errno
import logging
import threading
from pathlib import Path

import pytest

from controller.demo.waiting import wait_until
from controller.mqtt.journal import (
    Entry,
    Journal,
    JournalBusy,
    Position,
    Record,
    decode,
    encode,
)


class Durable:
    """Collects what the journal hands back, durable or failed."""

    def __init__(self) -> None:
        self.durable: list[Entry] = []
        self.failed: list[Entry] = []
        self.lock = threading.Lock()

    def ok(self, entries) -> None:
        with self.lock:
            self.durable.extend(entries)

    def bad(self, entries) -> None:
        with self.lock:
            self.failed.extend(entries)


class FullDisk(Journal):
    """A journal whose disk is full while `full` is set (the write seam raises ENOSPC)."""

    full = False

    def _write_synced(self, fd: int, records: list[bytes]) -> None:
        if self.full:
            raise OSError(errno.ENOSPC, "No space left on device")
        super()._write_synced(fd, records)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def open_journal(path, handed: Durable, cls=Journal, **kw) -> Journal:
    settings = {"max_bytes": 1 << 30, "segment_bytes": 1 << 20, **kw}
    return cls(path, on_durable=handed.ok, on_failed=handed.bad, **settings)


def entry(i: int, size: int = 100) -> Entry:
    return Entry(f"edgefleet/v1/dev-{i % 7}/det", bytes([i % 251]) * size, i % 2, 1000.0 + i)


def append_all(journal: Journal, handed: Durable, entries) -> None:
    before = len(handed.durable) + len(handed.failed)
    for one in entries:
        journal.append(one)
    wait_until(
        "entries synced",
        lambda: len(handed.durable) + len(handed.failed) >= before + len(entries),
        timeout=10,
    )


def read_all(journal: Journal) -> tuple[list[Record], Position]:
    got: list[Record] = []
    position = Position(0, 0)
    while journal.pending():
        records, position = journal.read(37)
        got.extend(records)
    return got, position


def as_record(one: Entry) -> Record:
    return Record(one.topic, one.payload, one.qos, one.at)


def ten_records_written(path) -> Path:
    """A journal folder holding entries 0-9 in one closed segment; that segment's path."""
    handed = Durable()
    journal = open_journal(path, handed).start()
    append_all(journal, handed, [entry(i) for i in range(10)])
    journal.stop()
    journal.close()
    return path / f"{journal.segments()[0]:016d}.seg"


def test_a_record_round_trips_and_any_damage_is_refused():
    one = entry(3)
    data = encode(one)
    assert decode(data, 0) == (as_record(one), len(data))
    assert decode(data[:-1], 0) is None  # cut short
    for at in (0, 5, 9, len(data) - 1):
        damaged = bytearray(data)
        damaged[at] ^= 0x40
        assert decode(bytes(damaged), 0) is None


def test_entries_are_handed_back_once_synced_and_read_back_in_order(tmp_path):
    handed = Durable()
    journal = open_journal(tmp_path, handed).start()
    entries = [entry(i) for i in range(3000)]  # more than one writev a sync
    append_all(journal, handed, entries)
    assert handed.durable == entries and handed.failed == []
    journal.seek(None)
    records, position = read_all(journal)
    assert records == [as_record(e) for e in entries]
    assert position == journal.durable()
    journal.stop()
    journal.close()


def test_a_restart_reads_from_the_stored_position_and_appends_to_a_new_segment(tmp_path):
    handed = Durable()
    first = open_journal(tmp_path, handed).start()
    append_all(first, handed, [entry(i) for i in range(100)])
    first.seek(None)
    head, _ = first.read(40)
    _, stored_at = first.read(0)  # the position after the first 40
    assert len(head) == 40
    first.stop()
    first.close()

    handed = Durable()
    second = open_journal(tmp_path, handed).start()
    assert second.id == first.id
    later = [entry(i) for i in range(100, 130)]
    append_all(second, handed, later)
    assert len(second.segments()) == 2
    second.seek(stored_at)
    records, _ = read_all(second)
    assert records == [as_record(entry(i)) for i in range(40, 100)] + [as_record(e) for e in later]
    second.stop()
    second.close()


def test_a_torn_tail_ends_its_segment_and_later_segments_are_still_read(tmp_path, caplog):
    segment = ten_records_written(tmp_path)
    whole = encode(entry(99))
    with segment.open("ab") as f:
        f.write(whole[: len(whole) // 2])  # a crash in the middle of a write

    handed = Durable()
    second = open_journal(tmp_path, handed).start()
    append_all(second, handed, [entry(i) for i in range(10, 15)])
    second.seek(None)
    with caplog.at_level(logging.WARNING, logger="controller.mqtt.journal"):
        records, _ = read_all(second)
    assert records == [as_record(entry(i)) for i in range(15)]
    assert "event=ingest_journal_tail_discarded" in caplog.text
    second.stop()
    second.close()


def test_a_damaged_record_ends_its_segment_and_is_not_read(tmp_path):
    segment = ten_records_written(tmp_path)
    data = bytearray(segment.read_bytes())
    size = len(encode(entry(0)))
    data[5 * size + 20] ^= 0xFF  # inside the sixth record's body
    segment.write_bytes(bytes(data))

    second = open_journal(tmp_path, Durable())
    second.seek(None)
    records, _ = read_all(second)
    assert records == [as_record(entry(i)) for i in range(5)]
    second.close()


def test_stored_segments_are_removed_and_the_backlog_counts_what_is_left(tmp_path):
    handed = Durable()
    journal = open_journal(tmp_path, handed, segment_bytes=200_000).start()
    entries = [entry(i, size=30_000) for i in range(40)]
    for group in range(4):  # 300 kB a write: each write after the first starts a segment
        append_all(journal, handed, entries[group * 10 : group * 10 + 10])
    assert len(journal.segments()) == 4
    total = journal.backlog_bytes()
    assert total == sum((tmp_path / f"{n:016d}.seg").stat().st_size for n in journal.segments())
    journal.seek(None)
    records, position = journal.read(25)
    journal.consumed(position)
    assert journal.segments()[0] == position.segment
    assert 0 < journal.backlog_bytes() < total
    rest, end = read_all(journal)
    assert records + rest == [as_record(e) for e in entries]
    journal.consumed(end)
    assert journal.backlog_bytes() == 0
    assert journal.segments() == [end.segment]
    journal.stop()
    journal.close()


def test_a_backlog_over_the_limit_refuses_appends_until_it_is_stored(tmp_path):
    handed = Durable()
    journal = open_journal(tmp_path, handed, max_bytes=1 << 20).start()
    append_all(journal, handed, [entry(i, size=20_000) for i in range(60)])
    assert not journal.accepting()
    journal.seek(None)
    _, position = read_all(journal)
    journal.consumed(position)
    assert journal.accepting()
    journal.stop()
    journal.close()


def test_a_full_disk_hands_entries_back_and_the_journal_retries_later(tmp_path, caplog):
    handed = Durable()
    clock = Clock()
    journal = open_journal(tmp_path, handed, cls=FullDisk, clock=clock).start()
    assert isinstance(journal, FullDisk)
    append_all(journal, handed, [entry(i) for i in range(5)])
    journal.full = True
    with caplog.at_level(logging.ERROR, logger="controller.mqtt.journal"):
        append_all(journal, handed, [entry(i) for i in range(5, 8)])
    assert [e.at for e in handed.failed] == [entry(i).at for i in range(5, 8)]
    assert "event=ingest_journal_write_failed" in caplog.text and "error=ENOSPC" in caplog.text
    assert journal.failures == 1
    assert not journal.accepting()

    journal.full = False
    clock.now += 10
    assert journal.accepting()
    append_all(journal, handed, [entry(i) for i in range(8, 10)])
    journal.seek(None)
    records, _ = read_all(journal)
    # nothing of the failed write is read back: the caller stores those another way
    assert records == [as_record(entry(i)) for i in (0, 1, 2, 3, 4, 8, 9)]
    journal.stop()
    journal.close()


@pytest.mark.parametrize("size", [0, 1, 64 * 1024])
def test_payloads_of_any_allowed_size_round_trip(tmp_path, size):
    handed = Durable()
    journal = open_journal(tmp_path, handed).start()
    one = Entry("edgefleet/v1/dev/health", b"\xff" * size, 0, 5.0)
    append_all(journal, handed, [one])
    journal.seek(None)
    assert read_all(journal)[0] == [as_record(one)]
    journal.stop()
    journal.close()


def test_a_second_process_on_the_same_folder_is_refused(tmp_path):
    first = open_journal(tmp_path, Durable())
    with pytest.raises(JournalBusy, match="data_dir of its own"):
        open_journal(tmp_path, Durable())
    first.close()
    open_journal(tmp_path, Durable()).close()  # free again once closed
