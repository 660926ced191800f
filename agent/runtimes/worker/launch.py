"""How a runtime worker is started and probed; kept free of numpy so the agent can plan
workers and probe through them before any model exists."""

from __future__ import annotations

import enum
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from agent.runtimes.base import RuntimeProbe

PROGRAM = Path(__file__).resolve().with_name("program.py")


class WorkerEventKind(enum.StrEnum):
    """What happened to a runtime worker."""

    CRASHED = "worker_crashed"
    RESTARTED = "worker_restarted"
    RESTART_FAILED = "worker_restart_failed"


@dataclass(frozen=True)
class WorkerEvent:
    """One crash or restart of a runtime worker, for events and logs."""

    kind: WorkerEventKind
    runtime: str
    detail: str
    crashes: int
    restarts: int


WorkerEvents = Callable[[WorkerEvent], None]


@dataclass(frozen=True)
class WorkerLaunch:
    """How to start a worker: the interpreter, extra import paths, environment, time limits."""

    python: str = sys.executable
    python_path: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    # folder of the shared-memory files; tmpfs (/dev/shm) where the system has it
    shm_dir: Path | None = None
    start_timeout_s: float = 60.0
    load_timeout_s: float = 900.0  # a TensorRT or MYRIAD compile on a small board is slow
    infer_timeout_s: float = 30.0
    backoff_s: float = 0.5
    backoff_max_s: float = 30.0
    # a worker that lived this long before dying starts the back-off again from `backoff_s`
    stable_s: float = 60.0


def default_shm_dir() -> Path:
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())


def probe_in_worker(key: str, launch: WorkerLaunch, timeout: float = 120.0) -> RuntimeProbe:
    """Probe one runtime under the worker's interpreter, in a process that exits at once."""
    try:
        completed = subprocess.run(
            [launch.python, str(PROGRAM), "--probe", key],
            capture_output=True,
            timeout=timeout,
            env={**os.environ, **launch.env, **_pythonpath(launch)},
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return RuntimeProbe(key, False, f"runtime worker {launch.python} did not probe: {exc}")
    try:
        (found,) = json.loads(completed.stdout.decode("utf-8", errors="replace"))
        devices = frozenset(str(d) for d in found.get("devices", ()))
        return RuntimeProbe(key, bool(found["available"]), str(found["reason"]), devices)
    except (ValueError, KeyError, TypeError):
        tail = completed.stderr.decode("utf-8", errors="replace").strip()[-300:]
        return RuntimeProbe(
            key,
            False,
            f"runtime worker {launch.python} failed to probe (status "
            f"{completed.returncode}): {tail or 'no output'}",
        )


def _pythonpath(launch: WorkerLaunch) -> dict[str, str]:
    if not launch.python_path:
        return {}
    extra = [os.environ.get("PYTHONPATH", "")]
    return {"PYTHONPATH": os.pathsep.join([*launch.python_path, *filter(None, extra)])}
