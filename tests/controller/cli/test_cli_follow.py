"""The CLI following what happens: `deploy --wait` to the end of a deployment, an upload and a
deployment with progress bars on a terminal (and nothing but the result when piped), and
`logs --follow` printing a device's events as they arrive."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from controller.cli.main import main
from controller.demo.waiting import wait_until
from protocol.events import EventKind, EventLevel
from protocol.messages import Event

# the answering agents, and a controller whose rollouts tick quickly
from tests.controller.rollouts.answering import controller, failing_fleet3, fleet3

__all__ = ["controller", "failing_fleet3", "fleet3"]

SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
ROOT = Path(__file__).resolve().parents[3]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def terminal(monkeypatch) -> io.StringIO:
    """Progress as it would be drawn on a terminal's stderr."""
    screen = io.StringIO()

    def console() -> Console:
        return Console(file=screen, force_terminal=True, width=120)

    for module in ("client", "bundles", "deploy", "rollout"):
        monkeypatch.setattr(f"controller.cli.{module}.progress_console", console)
    return screen


@SQLITE_ONLY
def test_deploy_wait_exits_0_when_it_runs(capsys, controller, fleet3):
    _, infos = fleet3
    api = controller.api_url
    code, out, err = run(
        capsys, "--api", api, "--output", "json", "deploy", "cam-0", "face@2", "--wait",
        "--interval", "0.1",
    )  # fmt: skip
    assert code == 0, err
    done = json.loads(out)  # nothing else on stdout: no progress when stderr is no terminal
    assert (done["status"], done["bundle"]) == ("running", infos[2].digest)
    assert err == ""


@SQLITE_ONLY
def test_deploy_wait_exits_1_when_it_fails_with_a_stage_bar(
    capsys, controller, failing_fleet3, terminal
):
    _, infos = failing_fleet3
    code, out, err = run(
        capsys, "--api", controller.api_url, "--output", "json", "deploy", "cam-1",
        infos[2].digest[:10], "--wait", "--interval", "0.1",
    )  # fmt: skip
    assert code == 1
    assert json.loads(out)["status"] == "failed"
    assert "deployment failed" in err
    assert "cam-1" in terminal.getvalue()


@SQLITE_ONLY
def test_deploy_wait_times_out_with_exit_1(capsys, controller, fleet3):
    for agent in fleet3[0]:
        agent.close()  # nobody answers now
    code, _, err = run(
        capsys, "--api", controller.api_url, "deploy", "cam-2", "face@2", "--wait",
        "--timeout", "0.5", "--interval", "0.1",
    )  # fmt: skip
    assert code == 1 and "deployment still sent after 0.5 s" in err


@SQLITE_ONLY
def test_upload_and_rollout_watch_draw_progress_on_a_terminal(
    capsys, controller, fleet3, make_bundle, terminal
):
    api = controller.api_url
    built = make_bundle(name="face", version=7, model_bytes=1_500_000)
    code, out, _ = run(
        capsys, "--api", api, "--output", "json", "bundle", "upload", str(built.path)
    )
    assert code == 0 and json.loads(out)["digest"] == built.digest
    assert f"upload {built.path.name}" in terminal.getvalue()

    code, out, _ = run(
        capsys, "--api", api, "--output", "json", "rollout", "create", "r7", "--bundle",
        "face@7", "--online", "--waves", "1,100%", "--rate", "600",
    )  # fmt: skip
    rid = json.loads(out)["id"]
    # by its name, or a prefix of its id
    assert (
        json.loads(run(capsys, "--api", api, "--output", "json", "rollout", "show", rid[:8])[1])[
            "id"
        ]
        == rid
    )
    code, out, err = run(
        capsys, "--api", api, "rollout", "show", "r7", "--watch", "--interval", "0.2"
    )
    assert code == 0, err
    drawn = terminal.getvalue()
    assert "wave 1" in drawn and "wave 2" in drawn
    assert "completed" in out and "wave 2: 2/2" in out


@SQLITE_ONLY
def test_logs_follow_prints_events_as_they_arrive(capsys, controller, fleet3):
    agents, _ = fleet3
    agent = agents[0].agent
    api = controller.api_url

    def event(message: str, kind: EventKind = EventKind.ERROR) -> None:
        agent.send(
            Event(device=agent.device, kind=kind, level=EventLevel.ERROR, message=message), "evt"
        )

    event("camera lost")
    wait_until(
        "first event",
        lambda: "camera lost" in run(capsys, "--api", api, "logs", agent.device)[1],
    )
    code, _, err = run(capsys, "--api", api, "logs", "cam-zz")
    assert code == 1 and "no device 'cam-zz'" in err

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(
        [sys.executable, "-m", "controller.cli.main", "--api", api, "--output", "json",
         "logs", agent.device, "--follow", "--interval", "0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
    ) as follower:  # fmt: skip
        try:
            assert follower.stdout is not None
            first = json.loads(follower.stdout.readline())
            assert first["message"] == "camera lost"  # the past first
            for n in range(3):
                event(f"line {n}", EventKind.LOG)
                got = json.loads(follower.stdout.readline())
                assert (got["kind"], got["message"]) == ("log", f"line {n}")
        finally:
            follower.terminate()
            follower.wait(10)
    code, out, _ = run(capsys, "--api", api, "logs", agent.device, "--kind", "log", "-n", "2")
    assert code == 0
    assert [line.split(" ", 2)[2] for line in out.splitlines()] == [
        "ERROR log line 1",
        "ERROR log line 2",
    ]
