"""`edgefleet controller run` with JSON logs: every line the process writes is one JSON object,
the lines of uvicorn, Alembic and the controller alike."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from controller.demo.broker import free_port
from controller.demo.waiting import wait_until


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_controller_run_logs_json_lines_only(tmp_path, mosquitto, db_url):
    port = free_port()
    config = tmp_path / "controller.json"
    config.write_text(
        json.dumps(
            {
                "data_dir": str(tmp_path / "data"),
                "database_url": db_url,
                "mqtt": {"port": mosquitto.port, "client_id": "cli-json-logs"},
                "http": {"port": port},
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    env["EDGEFLEET_LOG_FORMAT"] = "json"
    with subprocess.Popen(
        [sys.executable, "-m", "controller.cli.main", "controller", "run", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=Path(__file__).resolve().parents[3],
    ) as proc:
        try:

            def ready() -> bool:
                assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
                try:
                    return (
                        httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
                    )
                except httpx.TransportError:
                    return False

            wait_until("controller run to be ready", ready, timeout=20)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0
            output = proc.stdout.read().decode() if proc.stdout else ""
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    lines = [json.loads(line) for line in output.splitlines() if line.strip()]
    loggers = {entry["logger"] for entry in lines}
    messages = [entry["message"] for entry in lines]
    assert any(m.startswith("event=controller_started") for m in messages), messages
    assert any(m.startswith("event=controller_stopped") for m in messages), messages
    # the libraries' lines too, in the same format
    assert "uvicorn.error" in loggers, loggers
    assert any(name.startswith("alembic") for name in loggers), loggers
    assert all({"ts", "level", "logger", "message"} <= set(entry) for entry in lines)
