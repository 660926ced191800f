"""`edgefleet controller run` with JSON logs: every line the process writes is one JSON object,
the lines of uvicorn, Alembic and the controller alike."""

from __future__ import annotations

import json

import pytest

from tests.controller.cli.controller_process import run_until_ready


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_controller_run_logs_json_lines_only(tmp_path, mosquitto, db_url):
    output = run_until_ready(
        tmp_path, mosquitto.port, db_url, "cli-json-logs", "/readyz", EDGEFLEET_LOG_FORMAT="json"
    )
    lines = [json.loads(line) for line in output.splitlines() if line.strip()]
    loggers = {entry["logger"] for entry in lines}
    messages = [entry["message"] for entry in lines]
    assert any(m.startswith("event=controller_started") for m in messages), messages
    assert any(m.startswith("event=controller_stopped") for m in messages), messages
    # the libraries' lines too, in the same format
    assert "uvicorn.error" in loggers, loggers
    assert any(name.startswith("alembic") for name in loggers), loggers
    assert all({"ts", "level", "logger", "message"} <= set(entry) for entry in lines)
