"""`edgefleet controller run` as its own process: started on a settings file, stopped with
SIGTERM once a probe route answers 200, its whole output returned."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from controller.demo.broker import free_port
from controller.demo.waiting import wait_until


def run_until_ready(
    tmp_path: Path, broker_port: int, db_url: str, client_id: str, probe: str, **env: str
) -> str:
    """Serve until `probe` answers 200, then SIGTERM; asserts a clean exit, returns output."""
    port = free_port()
    config = tmp_path / "controller.json"
    settings = {
        "data_dir": str(tmp_path / "data"),
        "database_url": db_url,
        "mqtt": {"port": broker_port, "client_id": client_id},
        "http": {"port": port},
    }
    config.write_text(json.dumps(settings))
    environment = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    environment.update(env)
    with subprocess.Popen(
        [sys.executable, "-m", "controller.cli.main", "controller", "run", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=environment,
        cwd=Path(__file__).resolve().parents[3],
    ) as proc:
        try:

            def answers() -> bool:
                assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
                try:
                    url = f"http://127.0.0.1:{port}{probe}"
                    return httpx.get(url, timeout=1).status_code == 200
                except httpx.TransportError:
                    return False

            wait_until(f"controller run to answer {probe}", answers, timeout=20)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0
            return proc.stdout.read().decode() if proc.stdout else ""
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
