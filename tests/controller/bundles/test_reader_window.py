"""The reader window: a pass goes no further ahead of a bundle's readers than they report having
read, a silent reader stops holding it after a while, and a device cannot stall passes for ever
by asking again."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from controller.bundles.chunks import MAX_HOLDS, ChunkServer
from controller.bundles.repository import BundleInfo, BundleRepository
from controller.db import make_engine, session_factory, upgrade_database
from controller.demo.waiting import wait_until
from protocol.codec import decode_chunk
from protocol.topics import Topics

CHUNK = 4096
WINDOW = 4 * CHUNK


class Published:
    """Stands in for the MQTT publisher: the indices of the chunks handed to it."""

    def __init__(self) -> None:
        self.indices: list[int] = []
        self._lock = threading.Lock()

    def publish(self, topic: str, payload: bytes, *, timeout: float = 30.0) -> None:
        with self._lock:
            self.indices.append(decode_chunk(payload).index)

    def __len__(self) -> int:
        with self._lock:
            return len(self.indices)


def _steady(count: Callable[[], int], settle: float = 0.3) -> int:
    """The count once it stopped moving for `settle` seconds."""
    last = count()
    while True:
        time.sleep(settle)
        now = count()
        if now == last:
            return now
        last = now


@pytest.fixture
def served(tmp_path, make_bundle) -> Iterator[tuple[ChunkServer, Published, BundleInfo]]:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    upgrade_database(url)
    engine = make_engine(url)
    built = make_bundle(model_bytes=30 * CHUNK)
    store = BundleRepository(
        tmp_path / "bundles", session_factory(engine), lambda path: built.manifest, CHUNK
    )
    info = store.add_file(built.path)
    published = Published()
    server = ChunkServer(
        published,  # type: ignore[arg-type]
        store,
        Topics(),
        0.0,
        reader_window=WINDOW,
        reader_hold_s=1.0,
    ).start()
    try:
        yield server, published, info
    finally:
        server.stop()
        engine.dispose()


def test_a_pass_waits_for_its_slowest_reader_and_goes_on_as_it_reads(served):
    server, published, info = served
    everything = [(0, info.chunks - 1)]
    assert info.chunks > 20
    server.request(info, everything, device="fast")
    server.request(info, [(0, info.chunks - 1)], device="slow")
    # a window's worth goes out, then the pass waits for a report
    wait_until("the first window", lambda: len(published) >= WINDOW // CHUNK, 5)
    assert _steady(lambda: len(published)) == WINDOW // CHUNK
    server.progress("fast", info.digest, 4 / info.chunks)
    assert _steady(lambda: len(published)) == WINDOW // CHUNK, "the slow reader holds it"
    server.progress("slow", info.digest, 2 / info.chunks)
    # two more chunks read by the slowest: two more chunks out
    assert _steady(lambda: len(published)) == WINDOW // CHUNK + 2
    for have in range(6, info.chunks, 3):
        server.progress("fast", info.digest, have / info.chunks)
        server.progress("slow", info.digest, have / info.chunks)
        sent = _steady(lambda: len(published), 0.1)
        assert sent <= have + WINDOW // CHUNK
    server.progress("fast", info.digest, 1.0)
    server.finished("slow", info.digest)  # verified: it reads no more
    wait_until("the whole pass", lambda: len(published) == info.chunks, 5)
    assert published.indices == list(range(info.chunks)), "one pass, each chunk once"
    assert server.readers == 0 and server.readers_released == 0


def test_a_silent_reader_holds_a_pass_for_its_hold_time_then_no_longer(served):
    server, published, info = served
    server.request(info, [(0, info.chunks - 1)], device="gone-offline")
    started = time.monotonic()
    wait_until("the whole pass", lambda: len(published) == info.chunks, 10)
    took = time.monotonic() - started
    assert 0.9 <= took < 5, took
    assert server.readers_released == 1
    assert server.window_wait_s >= 0.9


def test_a_device_asking_again_and_again_stalls_passes_only_a_bounded_number_of_times(served):
    server, published, info = served
    everything = [(0, info.chunks - 1)]
    # the per-device rate limit allows three passes: the third goes out at once
    assert server.limit.passes == MAX_HOLDS + 1
    for attempt in range(MAX_HOLDS + 1):
        wanted = len(published) + info.chunks
        started = time.monotonic()
        server.request(info, everything, device="stalling")
        wait_until("its pass", lambda: len(published) == wanted, 10)  # noqa: B023
        held = time.monotonic() - started >= 0.9
        assert held == (attempt < MAX_HOLDS), attempt
    assert server.readers_released == MAX_HOLDS


def test_reports_from_devices_that_are_not_reading_change_nothing(served):
    server, published, info = served
    server.progress("stranger", info.digest, 0.5)
    server.finished("stranger", info.digest)
    server.progress("stranger", "ab" * 32, 1.0)
    assert server.readers == 0
    # a reader's report outside 0..1 is clamped: it cannot read more than the bundle
    server.request(info, [(0, info.chunks - 1)], device="cam")
    server.progress("cam", info.digest, -3.0)
    assert server.readers == 1
    server.progress("cam", info.digest, 7.0)
    assert server.readers == 0
    wait_until("the whole pass", lambda: len(published) == info.chunks, 5)


def test_readers_are_bounded(served):
    server, _, info = served
    server.max_readers = 5
    for n in range(12):
        server.request(info, [(n, n)], device=f"made-up-{n}")
    assert server.readers == 5


def test_the_budget_is_shared_out_so_more_readers_get_a_smaller_window_each(served):
    server, published, info = served
    server.readers_budget = 6 * CHUNK  # three readers: two chunks each, below their window
    for name in ("a", "b", "c"):
        server.request(info, [(0, info.chunks - 1)], device=name)
    wait_until("the first share", lambda: len(published) >= 2, 5)
    assert _steady(lambda: len(published)) == 2
    server.finished("c", info.digest)  # two readers left: three chunks each
    assert _steady(lambda: len(published)) == 3
    server.progress("a", info.digest, 3 / info.chunks)
    server.progress("b", info.digest, 1 / info.chunks)
    assert _steady(lambda: len(published)) == 4, "b, the slowest, is three behind"


def test_a_pass_starts_once_the_requests_of_a_wave_pause_so_one_pass_serves_them_all(served):
    first, _, info = served
    published = Published()
    server = ChunkServer(
        published,  # type: ignore[arg-type]
        first.store,
        Topics(),
        0.4,
        reader_window=0,
    ).start()
    try:
        everything = [(0, info.chunks - 1)]
        # devices asking one after another, each within the coalescing time of the last,
        # for longer than that time in all: nothing goes out until they pause
        for n in range(6):
            server.request(info, everything, device=f"cam-{n}")
            time.sleep(0.2)
            assert len(published) == 0, n
        # one that asks again while it waits does not hold the pass back
        last = time.monotonic()
        while not published.indices and time.monotonic() - last < 3:
            server.request(info, everything, device="cam-0")
            time.sleep(0.1)
        assert published.indices and time.monotonic() - last < 1.5
        wait_until("the pass", lambda: len(published) == info.chunks, 5)
        assert published.indices == list(range(info.chunks)) and server.passes == 1
    finally:
        server.stop()
