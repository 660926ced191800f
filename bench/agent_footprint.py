"""The agent's memory: resident set size of a real agent process, idle and running a model.

1. idle: no camera, no bundle, connected to a private mosquitto (the one the tests use);
2. running: one camera (the demo's sample video, looped) with the BlazeFace bundle on LiteRT,
   installed offline with `edgefleet-agent bundle install` before the start.

Each agent runs as `edgefleet-agent run` on a settings file, as on a device. The RSS is read
from /proc once the agent is up (state `online`; for the running one, a health report with
frames processed) and has settled; it is the largest of a few samples over `--settle` seconds.
Child processes are counted too (a runtime worker, when the device profile uses one), so the
running figure is reported for the agent alone and in total. Each agent runs with
PYTHONOPTIMIZE=2, as its systemd unit does (no docstrings in memory). The agent's packages and
the venv's site-packages and the interpreter's standard library are byte-compiled first for
optimisation levels 0 and 2, as an install does: a module whose cached bytecode is stale (or
not written, PYTHONDONTWRITEBYTECODE) is compiled at every start, and the compiler's leftovers
would count as the agent's.
Before each agent starts, the page cache of every shared library under the venv's
site-packages and the interpreter's lib-dynload is dropped (POSIX_FADV_DONTNEED): RSS counts
the file pages a process maps, and pages cached in large folios right after an install (files
just written) are mapped whole, which a device after a reboot, reading them in by fault
readahead, does not see; the figure should not depend on how recently pip wrote the files
(pages this process maps itself stay cached as they are).
Targets: idle <= 40 MB, running <= 120 MB. Ends with one `RESULT` line.
"""

from __future__ import annotations

import argparse
import compileall
import importlib
import json
import os
import re
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from controller.demo.broker import MosquittoBroker
from controller.demo.processes import spawn_agent, stop_agent, write_agent_config
from controller.demo.sample_video import write_sample_video
from controller.release.recipes import example_spec
from ota.build import build_bundle
from ota.keys import SigningKey
from ota.trust import TrustStore
from ota.trust_file import save_trust_store
from protocol.topics import Topics

IDLE_TARGET_MB = 40.0
RUNNING_TARGET_MB = 120.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


def descendants(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        for child in map(int, children):
            found += [child, *descendants(child)]
    return found


class Watcher:
    """The device's retained state and its latest health report, from the broker."""

    def __init__(self, port: int, device: str) -> None:
        topics = Topics()
        self.state: dict[str, Any] = {}
        self.health: dict[str, Any] = {}
        self.changed = threading.Condition()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"footprint-{device}")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe([(topics.state(device), 1), (topics.health(device), 0)])
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        body = json.loads(message.payload)
        with self.changed:
            if message.topic.endswith("/state"):
                self.state = body
            else:
                self.health = body
            self.changed.notify_all()

    def wait(self, what: str, predicate: Any, timeout: float) -> None:
        with self.changed:
            if not self.changed.wait_for(predicate, timeout):
                raise SystemExit(f"the agent did not reach '{what}' in {timeout:.0f} s")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def measure(pid: int, settle_s: float) -> tuple[float, float]:
    """(agent MB, agent and its children MB), the largest of samples over `settle_s`."""
    agent = total = 0.0
    deadline = time.monotonic() + settle_s
    while time.monotonic() < deadline:
        time.sleep(min(1.0, settle_s))
        own = rss_mb(pid)
        agent = max(agent, own)
        total = max(total, own + sum(rss_mb(child) for child in descendants(pid)))
    return agent, total


def run_agent(
    folder: Path,
    port: int,
    device: str,
    cameras: list[dict[str, Any]],
    settle_s: float,
    extra: dict[str, Any],
) -> tuple[float, float]:
    config = {
        **extra,
        "device_id": device,
        "data_dir": str(folder),
        "mqtt": {"host": "127.0.0.1", "port": port, "keepalive": 5},
        "cameras": cameras,
        "health_interval_s": 1.0,
        "log_level": "WARNING",
    }
    watcher = Watcher(port, device)
    drop_library_cache()
    env = {**os.environ, "PYTHONOPTIMIZE": "2"}  # as the unit runs it
    agent = spawn_agent(write_agent_config(folder, config), folder / "agent.log", env)
    try:
        watcher.wait("online", lambda: watcher.state.get("status") == "online", 120)
        if cameras:
            watcher.wait(
                "running the model",
                lambda: any(
                    c.get("frames_processed", 0) > 20 for c in watcher.health.get("cameras", [])
                ),
                120,
            )
        else:
            time.sleep(2.0)  # the start-up probe process has exited; the agent is idle
        return measure(agent.pid, settle_s)
    finally:
        stop_agent(agent)
        watcher.close()


OPTIMIZE_LEVELS = [0, 2]  # plain, and PYTHONOPTIMIZE=2 as the unit runs the agent


def site_packages() -> list[Path]:
    paths = sysconfig.get_paths()
    return sorted({Path(paths["purelib"]), Path(paths["platlib"])})


def compile_agent() -> None:
    """Write the bytecode of the agent's packages and the venv's, as an install does."""
    folders = [
        Path(folder)
        for name in ("agent", "ota", "protocol", "device_profiles")
        for folder in importlib.import_module(name).__path__
    ]
    # the venv's too (pydantic, paho, yaml...) and the interpreter's standard library, as the
    # Ansible role does (Debian ships only its plain bytecode: without the optimised one the
    # idle agent measured 44.9 MB instead of 39.8); up-to-date files are skipped, so the full
    # compile happens once per venv
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    if not os.access(stdlib, os.W_OK):
        print(f"note: {stdlib} is read-only here; its optimised bytecode may be missing")
    for folder in [*folders, *site_packages()]:
        for level in OPTIMIZE_LEVELS:
            compileall.compile_dir(folder, quiet=1, optimize=level, workers=0)
    # as the role: its test suites hold files that do not compile on purpose
    skip = re.compile(r"/(test|tests|site-packages|dist-packages)/")
    for level in OPTIMIZE_LEVELS:
        compileall.compile_dir(stdlib, quiet=2, optimize=level, workers=0, rx=skip)


def drop_library_cache() -> None:
    """Drop the cached pages of the venv's and the interpreter's shared libraries."""
    folders = [*site_packages(), Path(sysconfig.get_config_var("DESTSHARED"))]
    for folder in folders:
        for path in folder.rglob("*.so*"):
            if not path.is_file() or path.is_symlink():
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def install_blazeface(folder: Path) -> None:
    key = SigningKey.generate()
    save_trust_store(TrustStore.from_keys([key.public_key()]), folder / "trust.json")
    spec = example_spec("blazeface-short")
    built = build_bundle(
        spec, folder, [key], folder / "blazeface.bundle", datetime.now(timezone.utc)
    )
    subprocess.run(
        [
            *(sys.executable, "-m", "agent.cli", "bundle", "install", str(built.path)),
            *("--data-dir", str(folder), "--trust", str(folder / "trust.json")),
        ],
        check=True,
        capture_output=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--settle", type=float, default=5.0, help="seconds sampled per agent")
    parser.add_argument(
        "--no-snapshots", action="store_true", help="keep no best frames for snapshot requests"
    )
    parser.add_argument(
        "--worker", action="store_true", help="run LiteRT in a runtime worker (this interpreter)"
    )
    args = parser.parse_args()
    extra: dict[str, Any] = {"snapshots": {"enabled": False}} if args.no_snapshots else {}
    if args.worker:
        version = f"{sys.version_info[0]}.{sys.version_info[1]}"
        extra["runtime_workers"] = {"litert": {"python": sys.executable, "python_version": version}}
    compile_agent()
    with tempfile.TemporaryDirectory(prefix="footprint-") as tmp:
        root = Path(tmp)
        broker = MosquittoBroker(workdir=root / "broker")
        broker.start()
        try:
            idle_dir = root / "idle"
            idle_dir.mkdir()
            idle, idle_total = run_agent(
                idle_dir, broker.port, "footprint-idle", [], args.settle, extra
            )
            busy_dir = root / "busy"
            busy_dir.mkdir()
            install_blazeface(busy_dir)
            video = write_sample_video(root / "sample.avi", fps=10, seconds_per_image=1.0)
            camera = {"id": "cam0", "source": str(video.path), "loop": True}
            running, running_total = run_agent(
                busy_dir, broker.port, "footprint-busy", [camera], args.settle, extra
            )
        finally:
            broker.close()
    print(f"idle    agent {idle:6.1f} MB  with children {idle_total:6.1f} MB")
    print(f"running agent {running:6.1f} MB  with children {running_total:6.1f} MB")
    met = int(idle_total <= IDLE_TARGET_MB) + int(running_total <= RUNNING_TARGET_MB)
    print(
        f"RESULT idle_rss_mb={idle_total:.1f} blazeface_running_rss_mb={running_total:.1f} "
        f"blazeface_running_agent_rss_mb={running:.1f} targets_met={met}/2"
    )


if __name__ == "__main__":
    main()
