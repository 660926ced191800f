"""Ingest at fleet scale: N simulated devices against the real controller, and a raw drain.

Every device holds its own MQTT connection (bench/mqtt_load.py, asyncio, one or more
processes) and sends one detection batch per second at QoS 1 and a health sample every 10 s at
QoS 0, all valid wire messages. The broker is a mosquitto of the run's own, configured as the
embedded default does (controller.demo.broker); the controller is `edgefleet controller run` in
a subprocess (or several: `--replicas`), on SQLite or PostgreSQL.

Two phases on the same connected fleet:
1. raw drain: a subscriber that only counts takes everything for `--raw-seconds`, before any
   controller has subscribed (so no controller session queues those messages);
2. ingest: the controller(s) run, the fleet sends for `--seconds`; then sending stops and the
   run waits until everything acknowledged by the broker is in the database.

lost = detection batches the broker acknowledged to a device and that never reached the
database; p99 = device send time (the message's `ts`) to commit, from the controllers'
`edgefleet_ingest_latency_seconds` histogram; ratio = ingest msg/s over raw-drain msg/s.
`--kill-one` SIGKILLs replica 1 and its ingest workers halfway through and starts it again
5 s later (same client ids: its broker sessions hold what it had not acknowledged). Prints one
RESULT line; exits 1 when something was lost.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from mqtt_load import FleetCounts, check_messages, run_drain, run_fleet
from pgdb import create_database, drop_database
from sqlalchemy import func, select

from controller.db import (
    DetectionRow,
    HealthRollup,
    make_engine,
    upgrade_database,
)
from controller.demo.broker import MosquittoBroker, free_port
from protocol.topics import DEFAULT_PREFIX, Topics


class Replica:
    """One `edgefleet controller run` subprocess."""

    def __init__(
        self, index: int, workdir: Path, db_url: str, broker_port: int, group: str, workers: int
    ):
        self.index = index
        self.port = free_port()
        self.log_path = workdir / f"controller-{index}.log"
        self.env = {
            **os.environ,
            "EDGEFLEET_DATA_DIR": str(workdir / f"controller-{index}"),
            "EDGEFLEET_DATABASE_URL": db_url,
            "EDGEFLEET_MQTT__PORT": str(broker_port),
            "EDGEFLEET_MQTT__CLIENT_ID": f"bench-controller-{index}",
            "EDGEFLEET_HTTP__PORT": str(self.port),
        }
        if workers >= 0:
            self.env["EDGEFLEET_INGEST__WORKERS"] = str(workers)
        if group:
            self.env["EDGEFLEET_MQTT__SHARE_GROUP"] = group
        self.proc: subprocess.Popen[bytes] | None = None
        self.peak_rss_mb = 0.0

    def start(self) -> None:
        exe = Path(sys.executable).parent / "edgefleet"
        with self.log_path.open("ab") as out:
            # a process group of its own: kill() takes its ingest workers down with it
            self.proc = subprocess.Popen(
                [str(exe), "controller", "run"],
                env=self.env,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"controller {self.index} exited; see {self.log_path}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"controller {self.index} not ready in {timeout}s")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _pids(self) -> list[int]:
        """The controller and its ingest worker processes."""
        if self.proc is None or self.proc.poll() is not None:
            return []
        return [self.proc.pid, *children(self.proc.pid)]

    def rss_mb(self) -> float:
        """Resident memory of the controller and its workers together."""
        rss = 0.0
        for pid in self._pids():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1]) / 1024
        self.peak_rss_mb = max(self.peak_rss_mb, rss)
        return rss

    def cpu_s(self) -> float:
        """User + system CPU seconds so far of the controller, its workers and the workers
        that exited (0 once the controller is gone)."""
        ticks = 0
        pids = self._pids()
        for pid in pids:
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                ticks += int(fields[11]) + int(fields[12])
                if pid == pids[0]:
                    ticks += int(fields[13]) + int(fields[14])  # children it waited for
        return ticks / os.sysconf("SC_CLK_TCK")

    def metrics(self) -> str:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as resp:
            return resp.read().decode()

    def kill(self) -> None:
        """SIGKILL the controller and its ingest workers at once (a crash of the whole
        service, not only of its main process)."""
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def errors(self) -> int:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return sum(1 for line in text.splitlines() if "level=ERROR " in line or "Traceback" in line)


def children(pid: int) -> list[int]:
    """Process ids whose parent is `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def latency_histogram(metrics: str) -> dict[float, float]:
    """Cumulative bucket counts of edgefleet_ingest_latency_seconds."""
    out = {}
    for line in metrics.splitlines():
        if line.startswith("edgefleet_ingest_latency_seconds_bucket"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out[float("inf") if le == "+Inf" else float(le)] = float(line.rsplit(" ", 1)[1])
    return out


def quantile_ms(hist: dict[float, float], q: float) -> float:
    """The q-quantile from cumulative buckets, interpolated inside its bucket."""
    bounds = sorted(hist)
    total = hist[bounds[-1]] if bounds else 0
    if not total:
        return float("nan")
    want, low, below = q * total, 0.0, 0.0
    for bound in bounds:
        if hist[bound] >= want:
            if bound == float("inf"):
                return low * 1000
            share = (want - below) / max(hist[bound] - below, 1)
            return (low + (bound - low) * share) * 1000
        low, below = bound, hist[bound]
    return low * 1000


def stored_counts(engine: Any) -> tuple[int, int]:
    """(detection rows, health samples folded into rollups) of the benchmark's devices."""
    with engine.connect() as conn:
        det = conn.scalar(select(func.count()).select_from(DetectionRow)) or 0
        health = conn.scalar(select(func.coalesce(func.sum(HealthRollup.samples), 0))) or 0
    return int(det), int(health)


def distinct_detections(engine: Any) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(select(func.count(func.distinct(DetectionRow.id)))) or 0)


def wait_stored(engine: Any, expected: int, idle_s: float) -> int:
    """Wait until `expected` detections are stored or the count stops moving for `idle_s`."""
    deadline, last, last_change = time.monotonic() + 300, -1, time.monotonic()
    while time.monotonic() < deadline:
        det, _health = stored_counts(engine)
        if det >= expected:
            return det
        if det != last:
            last, last_change = det, time.monotonic()
        elif time.monotonic() - last_change > idle_s:
            return det
        time.sleep(0.5)
    return last


def wait_for_messages(results: Any, kind: str, n: int, timeout: float) -> list[tuple[Any, ...]]:
    got: list[tuple[Any, ...]] = []
    deadline = time.monotonic() + timeout
    while len(got) < n:
        item = results.get(timeout=max(0.1, deadline - time.monotonic()))
        if item[0] == kind:
            got.append(item)
        else:
            raise RuntimeError(f"unexpected {item[0]} while waiting for {kind}")
    return got


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--raw-seconds", type=float, default=0.0, help="0: min(10, seconds)")
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--procs", type=int, default=0, help="load processes; 0: 1 per 5,000")
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--kill-one", action="store_true", help="SIGKILL replica 1 mid-run")
    parser.add_argument(
        "--ingest-workers",
        type=int,
        default=-1,
        help="ingest worker processes per controller; -1: the controller's default",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument(
        "--broker-config", default="", help="extra mosquitto.conf lines (';' between lines)"
    )
    args = parser.parse_args()
    if args.kill_one and args.replicas < 2:
        parser.error("--kill-one needs --replicas 2 or more")
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < args.devices + 1000:
        parser.error(f"ulimit -n is {soft}; {args.devices} devices need {args.devices + 1000}")
    raw_seconds = args.raw_seconds or min(10.0, args.seconds)
    procs = args.procs or max(1, -(-args.devices // 5000))
    prefix = DEFAULT_PREFIX
    check_messages(Topics(prefix))

    workdir = Path(tempfile.mkdtemp(prefix="edgefleet-bench-ingest-"))
    pg_name = ""
    if args.database == "postgresql":
        pg_name, db_url = create_database()
    else:
        db_url = f"sqlite:///{workdir / 'controller.db'}"
    upgrade_database(db_url)
    engine = make_engine(db_url)
    extra = "\n".join(line.strip() for line in args.broker_config.split(";"))
    broker = MosquittoBroker(workdir=workdir / "broker", extra_config=extra).start()
    ctx = multiprocessing.get_context("fork")
    results: Any = ctx.Queue()
    sending, stop = ctx.Event(), ctx.Event()
    devices = [f"bench-{i:05d}" for i in range(args.devices)]
    fleet = [
        ctx.Process(
            target=run_fleet,
            args=(broker.host, broker.port, prefix, devices[i::procs], sending, stop, results),
        )
        for i in range(procs)
    ]
    group = "bench-ingest" if args.replicas > 1 else ""
    replicas = [
        Replica(i, workdir, db_url, broker.port, group, args.ingest_workers)
        for i in range(args.replicas)
    ]
    try:
        started = time.monotonic()
        for proc in fleet:
            proc.start()
        connected = sum(m[2] for m in wait_for_messages(results, "connected", procs, 600))
        print(f"connected={connected} in {time.monotonic() - started:.1f}s", flush=True)

        drain = ctx.Process(
            target=run_drain, args=(broker.host, broker.port, prefix, raw_seconds, results)
        )
        drain.start()
        wait_for_messages(results, "drain_ready", 1, 30)
        sending.set()
        _, drained, drain_s = wait_for_messages(results, "drain", 1, raw_seconds + 60)[0]
        sending.clear()
        drain.join(10)
        raw_rate = drained / drain_s
        print(f"raw_drain={drained} in {drain_s:.1f}s", flush=True)

        for replica in replicas:
            # one at a time: the first start of a fresh database also creates its secrets
            replica.start()
            replica.wait_ready(60)
        time.sleep(1.0)  # the drain phase's last messages were for no session: all gone

        cpu0 = sum(r.cpu_s() for r in replicas)
        t0 = time.monotonic()
        sending.set()
        killed, kill_at = False, 0.0
        # RSS once warmed up (a minute in, or a tenth of a shorter run), and at the end: a soak
        # (`--seconds 600`) shows whether the controller grows
        warm_at = min(60.0, args.seconds / 10)
        rss_warm = rss_end = 0.0
        while time.monotonic() - t0 < args.seconds:
            time.sleep(0.5)
            rss_end = sum(replica.rss_mb() for replica in replicas)
            if not rss_warm and time.monotonic() - t0 >= warm_at:
                rss_warm = rss_end
            if args.kill_one and not killed and time.monotonic() - t0 >= args.seconds / 2:
                replicas[1].kill()
                killed = True
                print(f"killed replica 1 at {time.monotonic() - t0:.1f}s", flush=True)
                kill_at = time.monotonic()
            down = killed and replicas[1].proc is not None and replicas[1].proc.poll() is not None
            if down and time.monotonic() - kill_at >= 5:
                replicas[1].start()
        sending.clear()
        window = time.monotonic() - t0
        det_at_end, health_at_end = stored_counts(engine)
        stop.set()
        counts = [m[1] for m in wait_for_messages(results, "fleet", procs, 120)]
        for proc in fleet:
            proc.join(30)
        if args.kill_one and replicas[1].proc is not None and replicas[1].proc.poll() is not None:
            replicas[1].start()
        for replica in replicas:
            replica.wait_ready(60)

        total = FleetCounts()
        for c in counts:
            for name in ("det_sent", "det_acked", "health_sent", "connected", "disconnects"):
                setattr(total, name, getattr(total, name) + getattr(c, name))
        stored_before_restart = wait_stored(engine, total.det_acked, 30)
        cpu = sum(r.cpu_s() for r in replicas) - cpu0
        hist: dict[float, float] = {}
        received = 0
        for replica in replicas:
            body = replica.metrics()
            for bound, value in latency_histogram(body).items():
                hist[bound] = hist.get(bound, 0.0) + value
            received += sum(
                int(float(line.rsplit(" ", 1)[1]))
                for line in body.splitlines()
                if line.startswith("edgefleet_ingest_received_total")
            )
            replica.rss_mb()
        if stored_before_restart < total.det_acked:
            # what the broker still holds for our sessions: a restart makes it send it again
            for replica in replicas:
                replica.stop()
                replica.start()
                replica.wait_ready(60)
            wait_stored(engine, total.det_acked, 60)
        det, health = stored_counts(engine)
        twice = det - distinct_detections(engine)
        rss = max(r.peak_rss_mb for r in replicas)
        lost = max(0, total.det_acked - det)
        ingest_rate = (det_at_end + health_at_end) / window
        workers_text = "auto" if args.ingest_workers < 0 else str(args.ingest_workers)
        fields = [
            f"devices={connected}",
            f"sent={total.det_acked}",
            f"stored={det}",
            f"lost={lost}",
            f"p99_ms={quantile_ms(hist, 0.99):.0f}",
            f"ingest_msg_s={ingest_rate:.0f}",
            f"raw_drain_msg_s={raw_rate:.0f}",
            f"ratio={ingest_rate / raw_rate:.2f}",
            f"controller_rss_mb={rss:.0f}",
            f"rss_growth_pct={(rss_end / rss_warm - 1) * 100 if rss_warm else 0.0:.1f}",
            f"controller_cpu_us_per_msg={cpu / max(det + health, 1) * 1e6:.0f}",
            f"controller_received={received}",
            f"stored_before_restart={stored_before_restart}",
            f"health_sent={total.health_sent}",
            f"health_stored={health}",
            f"database={args.database}",
            f"ingest_workers={workers_text}",
        ]
        if args.replicas > 1:
            fields += [f"replicas={args.replicas}", f"stored_twice={twice}", f"killed={killed}"]
        fields.append(f"controller_errors={sum(r.errors() for r in replicas)}")
        print("RESULT " + " ".join(fields), flush=True)
        return 1 if lost else 0
    finally:
        stop.set()
        for replica in replicas:
            replica.stop()
        for proc in fleet:
            if proc.is_alive():
                proc.terminate()
            proc.join(10)
        results.close()
        broker.close()
        engine.dispose()
        if pg_name:
            drop_database(pg_name)
        if args.keep:
            print(f"work folder: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
