"""One thread drives every simulated device: a selector over their MQTT sockets, and timers.

paho clients run without threads of their own here: paho tells the loop when a socket opens,
closes, or has bytes to write (its external event loop callbacks), and the loop calls
`loop_read`/`loop_write`/`loop_misc`. A thousand clients then cost one thread, not a thousand.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import queue
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

log = logging.getLogger(__name__)


class Pollable(Protocol):
    """What the loop needs of a device's connection."""

    def on_readable(self) -> None: ...

    def on_writable(self) -> None: ...

    def misc(self) -> None: ...


@dataclass(order=True)
class Timer:
    at: float
    seq: int
    fn: Callable[[], None] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.cancelled = True


class Loop:
    """A selector loop with timers; everything it runs runs on its one thread."""

    def __init__(self, misc_interval_s: float = 1.0) -> None:
        self._sel = selectors.DefaultSelector()
        self._timers: list[Timer] = []
        self._seq = itertools.count()
        self._calls: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._pollables: dict[int, Pollable] = {}
        self._interest: dict[int, int] = {}
        self._paused: set[int] = set()
        self._misc_interval_s = misc_interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors = 0

    # ---- scheduling (loop thread, except call_soon_threadsafe) ----------------------------

    def call_later(self, delay: float, fn: Callable[[], None]) -> Timer:
        timer = Timer(time.monotonic() + max(0.0, delay), next(self._seq), fn)
        heapq.heappush(self._timers, timer)
        return timer

    def call_soon_threadsafe(self, fn: Callable[[], None]) -> None:
        self._calls.put(fn)
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"x")

    def run_sync(self, fn: Callable[[], object], timeout: float = 60.0) -> object:
        """Run `fn` on the loop thread and return its result; raises what it raises."""
        done = threading.Event()
        box: dict[str, object] = {}

        def call() -> None:
            try:
                box["value"] = fn()
            except BaseException as exc:  # handed back to the caller's thread
                box["error"] = exc
            finally:
                done.set()

        self.call_soon_threadsafe(call)
        if not done.wait(timeout):
            raise TimeoutError("the simulator's loop did not answer")
        if "error" in box:
            raise box["error"]  # type: ignore[misc]
        return box.get("value")

    # ---- sockets ---------------------------------------------------------------------------

    def add(self, sock: socket.socket, owner: Pollable) -> None:
        fd = sock.fileno()
        self._pollables[fd] = owner
        self._interest[fd] = selectors.EVENT_READ
        self._sel.register(fd, selectors.EVENT_READ, owner)

    def remove(self, sock: socket.socket) -> None:
        fd = sock.fileno()
        if fd < 0 or fd not in self._pollables:
            return
        del self._pollables[fd]
        self._interest.pop(fd, None)
        self._paused.discard(fd)
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(fd)

    def want_write(self, sock: socket.socket, on: bool) -> None:
        self._set(sock.fileno(), selectors.EVENT_WRITE, on)

    def pause_reading(self, sock: socket.socket, paused: bool) -> None:
        """A slow link: stop reading from `sock` for a while (the broker's queue then grows)."""
        fd = sock.fileno()
        if paused:
            self._paused.add(fd)
        else:
            self._paused.discard(fd)
        self._set(fd, selectors.EVENT_READ, not paused)

    def _set(self, fd: int, bit: int, on: bool) -> None:
        if fd not in self._interest:
            return
        old = self._interest[fd]
        new = (old | bit) if on else (old & ~bit)
        if new == old:
            return
        self._interest[fd] = new
        owner = self._pollables[fd]
        if old and new:
            self._sel.modify(fd, new, owner)
        elif new:
            self._sel.register(fd, new, owner)
        else:
            self._sel.unregister(fd)

    # ---- running ---------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> Loop:
        self._thread = threading.Thread(target=self._run, name="sim-loop", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.call_soon_threadsafe(lambda: None)
        if self._thread is not None:
            self._thread.join(timeout)
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()

    def _run(self) -> None:
        next_misc = time.monotonic() + self._misc_interval_s
        while not self._stop.is_set():
            now = time.monotonic()
            wait = min(next_misc, self._timers[0].at if self._timers else next_misc) - now
            for key, mask in self._sel.select(max(0.0, min(wait, 0.5))):
                if key.data is None:
                    self._drain_calls()
                    continue
                owner: Pollable = key.data
                if mask & selectors.EVENT_WRITE:
                    self._guard(owner.on_writable)
                if mask & selectors.EVENT_READ:
                    self._guard(owner.on_readable)
            self._drain_calls()
            now = time.monotonic()
            while self._timers and self._timers[0].at <= now:
                timer = heapq.heappop(self._timers)
                if not timer.cancelled:
                    self._guard(timer.fn)
            if now >= next_misc:
                next_misc = now + self._misc_interval_s
                for owner in list(self._pollables.values()):
                    self._guard(owner.misc)

    def _drain_calls(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass
        while True:
            try:
                fn = self._calls.get_nowait()
            except queue.Empty:
                return
            self._guard(fn)

    def _guard(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:  # one device's trouble must not stop the fleet
            self.errors += 1
            log.exception("event=sim_loop_error")
