"""Ingest worker processes: detections and health stored beside the controller's process.

One Python process stores messages on one core at most: its threads (receiver, journal,
writer) take turns holding the interpreter lock. At 10,000 devices the controller's writer
held it about half the time and waited for it a third, while the box had CPU to spare; on a
slower day the ingest fell behind. With `ingest.workers = N` the controller starts N
processes of `python -m controller.mqtt.workers`, each an ingest of its own for the bulk
channels (controller.mqtt.ingest.BULK_CHANNELS: detections and health) with its own MQTT
sessions in the share group (client ids `<client_id>-w<N>…`), its own journal
(`data_dir/ingest-journal-w<N>`) and its own database connections. It is the replica design
inside one controller: the broker spreads the messages over every session of the group, and
the same rules keep each message stored once. The controller's own ingest keeps the channels
its hooks react to (state, events, acks), so deployments advance where they always did.

The parent hands a worker its settings as one JSON line on stdin (not its arguments: the
database URL may hold a password) and keeps the pipe open; a worker stops cleanly when the pipe
closes (the controller is gone, however it died), on SIGTERM or on SIGINT. A worker writes one
JSON line of status to stdout every REPORT_S: ready or not, and its ingest's counters, which
the controller's `/metrics` adds to its own. A worker that exits is started again after a
growing delay; its counters are carried over, so the merged counters never go back.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any, cast

from controller.db import make_engine, session_factory
from controller.mqtt.ingest import BULK_CHANNELS, Ingest, kv, merge_snapshots
from controller.mqtt.journal import JournalBusy
from controller.settings import IngestSettings, MqttSettings
from controller.tuning import limit_malloc_arenas, tune_gc
from protocol.logs import configure_logging

log = logging.getLogger(__name__)

REPORT_S = 0.5
"""How often a worker reports its status to the controller."""
RESTART_DELAYS_S = (1.0, 2.0, 5.0, 15.0, 30.0)
"""Delays before starting a worker that exited again, growing with each exit in a row."""
RETIRE_UNFINISHED = 3
"""A retiring worker's exit status when it stopped before it was done: it runs again."""
STABLE_S = 60.0
"""A worker that ran this long before it exited starts again after the shortest delay."""
_GAUGES = ("queued", "journal_bytes", "unacked", "lag_s", "last_commit_ms")
"""What a worker's last snapshot says of now, not of its past: not carried over an exit."""


def journal_dir(data_dir: Path, index: int) -> Path:
    """Worker `index`'s journal."""
    return data_dir / f"ingest-journal-w{index}"


def retired_workers(data_dir: Path, count: int) -> list[int]:
    """Indices above `count` whose journal is still here: workers of an earlier, larger
    count, whose sessions the broker still counts in the share group."""
    found = []
    for path in data_dir.glob("ingest-journal-w*"):
        suffix = path.name.removeprefix("ingest-journal-w")
        if path.is_dir() and suffix.isdigit() and int(suffix) > count:
            found.append(int(suffix))
    return sorted(found)


def worker_client_id(client_id: str, index: int) -> str:
    """The base of worker `index`'s MQTT client ids (its sessions add -1, -2, …)."""
    return f"{client_id}-w{index}"


@dataclass(frozen=True)
class WorkerConfig:
    """What every worker is started with; JSON on the worker's stdin."""

    mqtt: MqttSettings
    ingest: IngestSettings
    database_url: str
    data_dir: Path
    log_format: str = "text"
    log_level: int = logging.INFO
    """The controller's own (its root logger's), so workers say as much as it does."""

    def for_worker(self, index: int, retiring: bool = False) -> str:
        mqtt = self.mqtt.model_copy(
            update={"client_id": worker_client_id(self.mqtt.client_id, index)}
        )

        return json.dumps(
            {
                "index": index,
                "retiring": retiring,
                "mqtt": mqtt.model_dump(mode="json"),
                "ingest": self.ingest.model_dump(mode="json"),
                "database_url": self.database_url,
                "data_dir": str(self.data_dir),
                "log_format": self.log_format,
                "log_level": self.log_level,
            }
        )


def _from_wire(stats: dict[str, Any]) -> dict[str, Any]:
    # JSON keeps the latency buckets' bounds as strings ("0.005", "Infinity")
    stats["latency_buckets"] = {float(k): v for k, v in stats["latency_buckets"].items()}
    return stats


def _carry(carried: dict[str, Any] | None, last: dict[str, Any]) -> dict[str, Any]:
    past = dict(last)
    for key in _GAUGES:
        past[key] = 0
    return past if carried is None else merge_snapshots([carried, past])


def _close_pipes(process: subprocess.Popen[bytes]) -> None:
    for pipe in (process.stdin, process.stdout):
        if pipe is not None:
            # a broken pipe to a dead worker has nothing left to flush
            with contextlib.suppress(OSError):
                pipe.close()


@dataclass
class _Worker:
    index: int
    retiring: bool = False
    retired: bool = False
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    ready: bool = False
    stats: dict[str, Any] | None = None
    carried: dict[str, Any] | None = None
    exits: int = 0
    next_start: float = 0.0
    reader: threading.Thread | None = field(default=None, repr=False)


class IngestWorkers:
    """The controller's ingest worker processes: started, watched, started again, stopped."""

    def __init__(
        self, config: WorkerConfig, count: int, *, command: list[str] | None = None
    ) -> None:
        self.config = config
        self.command = command or [sys.executable, "-m", "controller.mqtt.workers"]
        self._workers = [_Worker(i) for i in range(1, count + 1)]
        # workers of a larger count before: each runs once more to take what the broker and
        # its journal kept, drops its subscriptions and its journal, and is gone
        self._workers += [
            _Worker(i, retiring=True) for i in retired_workers(config.data_dir, count)
        ]
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None

    # -- parent side --

    def start(self) -> IngestWorkers:
        for worker in self._workers:
            self._spawn(worker)
        self._watcher = threading.Thread(target=self._watch, name="ingest-workers", daemon=True)
        self._watcher.start()
        return self

    @property
    def ready(self) -> bool:
        """True while every worker says its sessions are connected and subscribed."""
        with self._lock:
            return all(w.ready for w in self._workers if not w.retiring)

    def wait_ready(self, timeout: float) -> bool:
        """True once every worker said it is ready, within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not self.ready:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    @property
    def retiring(self) -> list[int]:
        """Indices of the workers still retiring."""
        with self._lock:
            return [w.index for w in self._workers if w.retiring and not w.retired]

    def pids(self) -> list[int]:
        """The running workers' process ids."""
        with self._lock:
            return [w.process.pid for w in self._workers if w.process and w.process.poll() is None]

    def snapshots(self) -> list[dict[str, Any]]:
        """Each worker's ingest counters, with those of its earlier runs carried over."""
        out = []
        with self._lock:
            for w in self._workers:
                parts = [s for s in (w.carried, w.stats) if s is not None]
                if parts:
                    out.append(merge_snapshots(parts))
        return out

    def stop(self, timeout: float = 20.0) -> None:
        """Close every worker's pipe (each stores what it holds and exits), then wait; a
        worker still running after `timeout` is killed (its journal and the broker keep what it
        had not stored)."""
        self._stopping.set()
        if self._watcher is not None:
            self._watcher.join(5.0)
        with self._lock:
            running = [(w, w.process) for w in self._workers if w.process is not None]
        for _, process in running:
            if process.stdin is not None:
                with contextlib.suppress(OSError):  # it is gone already
                    process.stdin.close()
        deadline = time.monotonic() + timeout
        for w, process in running:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("event=ingest_worker_killed index=%d pid=%d", w.index, process.pid)
                process.kill()
                process.wait(5.0)
            else:
                if process.returncode not in (0, RETIRE_UNFINISHED if w.retiring else 0):
                    log.error(
                        "event=ingest_worker_stop_failed index=%d pid=%d code=%d",
                        w.index,
                        process.pid,
                        process.returncode,
                    )
            if w.reader is not None:
                w.reader.join(2.0)
            _close_pipes(process)

    def _spawn(self, worker: _Worker) -> None:
        try:
            process = subprocess.Popen(
                self.command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        except OSError as exc:
            log.error("event=ingest_worker_spawn_failed index=%d error=%s", worker.index, kv(exc))
            worker.next_start = time.monotonic() + RESTART_DELAYS_S[-1]
            return
        stdin, stdout = cast(IO[bytes], process.stdin), cast(IO[bytes], process.stdout)
        with contextlib.suppress(OSError):  # it died at once: the watcher sees it exit
            stdin.write(self.config.for_worker(worker.index, worker.retiring).encode() + b"\n")
            stdin.flush()
        with self._lock:
            worker.process, worker.started, worker.ready = process, time.monotonic(), False
        worker.reader = threading.Thread(
            target=self._read,
            args=(worker, stdout),
            name=f"ingest-worker-{worker.index}",
            daemon=True,
        )
        worker.reader.start()
        log.info(
            "event=ingest_worker_started index=%d pid=%d retiring=%s",
            worker.index,
            process.pid,
            worker.retiring,
        )

    def _read(self, worker: _Worker, stream: IO[bytes]) -> None:
        for line in stream:
            try:
                status = json.loads(line)
                stats = _from_wire(status["stats"])
                ready = bool(status["ready"])
            except (ValueError, KeyError, TypeError, AttributeError):
                log.warning("event=ingest_worker_bad_status index=%d", worker.index)
                continue
            with self._lock:
                worker.stats, worker.ready = stats, ready

    def _watch(self) -> None:
        while not self._stopping.wait(0.2):
            for worker in self._workers:
                process = worker.process
                if worker.retired:
                    continue
                if process is None:
                    if time.monotonic() >= worker.next_start:
                        self._spawn(worker)
                    continue
                code = process.poll()
                if code is None:
                    continue
                if worker.reader is not None:
                    worker.reader.join(2.0)  # its last report, counters included
                _close_pipes(process)
                if worker.retiring and code == 0:
                    log.info("event=ingest_worker_retired index=%d", worker.index)
                    with self._lock:
                        if worker.stats is not None:
                            worker.carried = _carry(worker.carried, worker.stats)
                        worker.process, worker.stats, worker.retired = None, None, True
                    continue
                ran = time.monotonic() - worker.started
                worker.exits = 1 if ran >= STABLE_S else worker.exits + 1
                delay = RESTART_DELAYS_S[min(worker.exits, len(RESTART_DELAYS_S)) - 1]
                log.error(
                    "event=ingest_worker_exited index=%d pid=%d code=%d ran_s=%.1f "
                    "restart_in_s=%.0f",
                    worker.index,
                    process.pid,
                    code,
                    ran,
                    delay,
                )
                with self._lock:
                    if worker.stats is not None:
                        worker.carried = _carry(worker.carried, worker.stats)
                    worker.process, worker.stats, worker.ready = None, None, False
                    worker.next_start = time.monotonic() + delay


# ---- worker side ----------------------------------------------------------------------------


def _retired(ingest: Ingest) -> bool:
    """A retiring worker is done once its sessions took what the broker kept for them (the
    ingest's own test for retired sessions) and all of it is stored."""
    snap = ingest.stats.own_snapshot()
    return ingest.sessions_retired and not snap["queued"] and not snap["journal_bytes"]


def _report(ingest: Ingest) -> bool:
    """One status line to the controller; False when it no longer reads them."""
    status = {"ready": ingest.ready, "stats": ingest.stats.own_snapshot()}
    try:
        sys.stdout.write(json.dumps(status) + "\n")
        sys.stdout.flush()
    except OSError:  # the controller is gone
        return False
    return True


def run_worker(config: dict[str, Any]) -> int:
    """One worker: ingest the bulk channels until stdin closes or a signal comes."""
    configure_logging(int(config.get("log_level", logging.INFO)), config.get("log_format", "text"))
    limit_malloc_arenas()
    index = int(config["index"])
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)

    def watch_parent() -> None:
        # the pipe closes when the controller stops us or dies, however it dies; read raw,
        # not through sys.stdin, whose lock a thread blocked in it would hold at exit
        with contextlib.suppress(OSError):
            while os.read(sys.stdin.fileno(), 4096):
                pass
        stop.set()

    retiring = bool(config.get("retiring"))
    journal = journal_dir(Path(config["data_dir"]), index)
    engine = make_engine(config["database_url"])
    try:
        ingest = Ingest(
            MqttSettings.model_validate(config["mqtt"]),
            IngestSettings.model_validate(config["ingest"]),
            session_factory(engine),
            journal_dir=journal,
            channels=BULK_CHANNELS,
            retiring=retiring,
        )
    except (JournalBusy, OSError) as exc:
        log.error("event=ingest_worker_failed index=%d error=%s", index, kv(exc))
        engine.dispose()
        return 2
    threading.Thread(target=watch_parent, name="parent-pipe", daemon=True).start()
    ingest.start()
    tune_gc()  # what is built so far lives as long as the process
    log.info(
        "event=ingest_worker_running index=%d pid=%d retiring=%s", index, os.getpid(), retiring
    )
    while not stop.wait(REPORT_S):
        if not _report(ingest):
            break
        if retiring and _retired(ingest):
            break
    ingest.stop()
    _report(ingest)
    engine.dispose()
    if retiring and not stop.is_set() and ingest.stats.own_snapshot()["journal_bytes"] == 0:
        # everything it held is stored, and its sessions subscribe nothing any more
        shutil.rmtree(journal, ignore_errors=True)
        return 0
    log.info("event=ingest_worker_stopped index=%d", index)
    return 0 if not retiring else RETIRE_UNFINISHED


def main() -> int:
    line = sys.stdin.buffer.readline()
    try:
        config = json.loads(line)
    except ValueError:
        print("edgefleet ingest worker: expected its settings as one JSON line", file=sys.stderr)
        return 2
    return run_worker(config)


if __name__ == "__main__":
    # run as the module of its real name, so its log lines name it (not __main__)
    from controller.mqtt.workers import main as worker_main

    sys.exit(worker_main())
