"""One log format for both sides: JSON lines (or text) through one root handler, library loggers
included, chosen by the caller or $EDGEFLEET_LOG_FORMAT."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from protocol.logs import CHATTY_LOGGERS, THIRD_PARTY_LOGGERS, configure_logging, log_format

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def restore_logging():
    """configure_logging changes process-wide state: put it back for the next tests."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    libraries = {
        name: (logging.getLogger(name).handlers[:], logging.getLogger(name).propagate)
        for name in THIRD_PARTY_LOGGERS
    }
    levels = {name: logging.getLogger(name).level for name in CHATTY_LOGGERS}
    yield
    logging.captureWarnings(False)
    for handler in root.handlers[:]:
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    for name, (old, propagate) in libraries.items():
        logging.getLogger(name).handlers[:] = old
        logging.getLogger(name).propagate = propagate
    for name, chatty_level in levels.items():
        logging.getLogger(name).setLevel(chatty_level)


def test_library_lines_come_out_as_json_through_the_one_handler(restore_logging):
    # a library that had set up a handler of its own, in its own format
    library = logging.getLogger("uvicorn.error")
    own = io.StringIO()
    library.addHandler(logging.StreamHandler(own))
    library.propagate = False

    out = io.StringIO()
    configure_logging("INFO", "json", stream=out)
    library.info("Started server process [%d]", 42)
    logging.getLogger("sqlalchemy.engine.Engine").warning("pool %s", "exhausted")
    logging.getLogger("controller.server").info(
        "event=controller_started", extra={"device": "cam-a", "n": 3, "path": Path("/x")}
    )
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("agent.daemon").exception("event=crashed")
    logging.getLogger("paho.mqtt.client").debug("below the level: dropped")

    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert own.getvalue() == ""
    assert [(e["logger"], e["level"], e["message"]) for e in lines] == [
        ("uvicorn.error", "INFO", "Started server process [42]"),
        ("sqlalchemy.engine.Engine", "WARNING", "pool exhausted"),
        ("controller.server", "INFO", "event=controller_started"),
        ("agent.daemon", "ERROR", "event=crashed"),
    ]
    assert lines[2]["device"] == "cam-a" and lines[2]["n"] == 3 and lines[2]["path"] == "/x"
    assert "ValueError: boom" in lines[3]["exc"] and "Traceback" in lines[3]["exc"]
    assert lines[0]["ts"].endswith("Z") and "T" in lines[0]["ts"]
    assert {"ts", "level", "logger", "message"} == set(lines[0])


def test_text_format_is_key_value_and_replaces_older_handlers(restore_logging):
    out = io.StringIO()
    configure_logging("DEBUG", "text", stream=out)
    second = io.StringIO()
    configure_logging("DEBUG", "text", stream=second)  # again: one handler, not two
    logging.getLogger("apscheduler.scheduler").debug("tick")
    assert out.getvalue() == ""
    (line,) = second.getvalue().splitlines()
    assert line.endswith(" level=DEBUG logger=apscheduler.scheduler tick")
    assert line.startswith("ts=")


def test_a_job_run_says_nothing_at_info_but_its_failure_does_and_debug_says_all(restore_logging):
    out = io.StringIO()
    configure_logging("INFO", "text", stream=out)
    jobs = logging.getLogger("apscheduler.executors.default")
    jobs.info('Running job "rollouts-tick"')
    jobs.error('Job "rollouts-tick" raised an exception')
    assert [line.split(" logger=")[1] for line in out.getvalue().splitlines()] == [
        'apscheduler.executors.default Job "rollouts-tick" raised an exception'
    ]
    verbose = io.StringIO()
    configure_logging("DEBUG", "text", stream=verbose)
    jobs.info('Running job "rollouts-tick"')
    assert 'Running job "rollouts-tick"' in verbose.getvalue()


def test_the_format_comes_from_the_environment_and_bad_names_are_refused(monkeypatch):
    monkeypatch.setenv("EDGEFLEET_LOG_FORMAT", "JSON")
    assert log_format() == "json"
    assert log_format("text") == "text"
    monkeypatch.setenv("EDGEFLEET_LOG_FORMAT", "xml")
    with pytest.raises(ValueError, match="log format must be one of text, json"):
        log_format()
    monkeypatch.delenv("EDGEFLEET_LOG_FORMAT")
    assert log_format() == "text"
    with pytest.raises(ValueError, match="unknown log level"):
        configure_logging("LOUD", "text", stream=io.StringIO())


def test_the_agent_logs_json_with_paho_and_warnings_in_it():
    script = (
        "import logging, warnings\n"
        "from agent.cli import setup_logging\n"
        "setup_logging('info')\n"
        "logging.getLogger('paho.mqtt.client').warning('Connection failed, retrying')\n"
        "warnings.warn('old option', DeprecationWarning, stacklevel=1)\n"
        "logging.getLogger('agent.daemon').info('event=started')\n"
    )
    done = subprocess.run(
        [sys.executable, "-W", "always", "-c", script],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"EDGEFLEET_LOG_FORMAT": "json", "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert [entry["logger"] for entry in lines] == [
        "paho.mqtt.client",
        "py.warnings",
        "agent.daemon",
    ]
    assert "old option" in lines[1]["message"]


def test_the_agent_refuses_an_unknown_format_without_a_traceback(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent.cli",
            "run",
            "--device-id",
            "cam-a",
            "--data-dir",
            str(tmp_path / "data"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"EDGEFLEET_LOG_FORMAT": "xml", "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr == "edgefleet-agent: log format must be one of text, json, not 'xml'\n"
    assert not (tmp_path / "data").exists()
