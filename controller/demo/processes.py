"""The agent as a separate process: its settings file, starting it, stopping it.

One way to run an agent beside a controller, shared by the demo and the end-to-end tests.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml


def agent_command() -> list[str]:
    """The agent's console script beside this interpreter, else the module."""
    script = Path(sys.executable).with_name("edgefleet-agent")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "agent.cli"]


def write_agent_config(agent_dir: Path, config: dict[str, Any]) -> Path:
    """Write an agent settings file into `agent_dir`; returns its path. Raises OSError."""
    path = agent_dir / "agent.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def spawn_agent(
    config_path: Path, log_path: Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start `edgefleet-agent run` on a settings file, appending its output to `log_path`.

    Raises OSError.
    """
    environment = {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"}
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [*agent_command(), "run", "--config", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environment,
        )


def stop_agent(agent: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM (the agent flushes its outbox and says offline), SIGKILL if it hangs."""
    if agent.poll() is None:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait(timeout=5)
