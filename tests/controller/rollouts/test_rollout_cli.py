"""`edgefleet rollout`, `group`, `tag`, `targets` and the device commands against a started
controller with answering agents; `--output json` on each, and the live `--watch` view."""

from __future__ import annotations

import json

import pytest

from controller.cli.main import main
from controller.demo.waiting import wait_until
from protocol.messages import Rollback

SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def run(capsys, api: str, *argv: str, output: str = "json"):
    capsys.readouterr()
    code = main(["--api", api, "--output", output, *argv])
    out = capsys.readouterr().out
    assert code == 0, out
    return json.loads(out) if output == "json" else out


@SQLITE_ONLY
def test_rollout_from_the_cli_with_groups_watch_and_abort_revert(capsys, controller, fleet3):
    agents, infos = fleet3
    api = controller.api_url
    for device in ("cam-1", "cam-2"):
        assert run(capsys, api, "tag", device, "--add", "pilot")["tags"] == ["pilot"]
    group = run(capsys, api, "group", "set", "pilot", "--tag", "pilot", "--online")
    assert group["devices"] == ["cam-1", "cam-2"]
    assert [g["name"] for g in run(capsys, api, "group", "list")] == ["pilot"]

    created = run(
        capsys,
        api,
        "rollout",
        "create",
        "pilot-face2",
        "--bundle",
        "face@2",
        "--group",
        "pilot",
        "--waves",
        "1,100%",
        "--rate",
        "600",
        "--max-in-flight",
        "2",
        "--failure-threshold",
        "50%",
        "--timeout-probation",
        "120",
        "--approval",
    )
    rid = created["id"]
    assert created["spec"]["timeouts"]["probation_s"] == 120
    assert created["spec"]["max_in_flight"] == 2
    assert created["spec"]["failure_threshold"] == {"value": 50.0, "percent": True}
    wait_until(
        "waiting for approval",
        lambda: run(capsys, api, "rollout", "show", rid)["state"] == "waiting_approval",
    )
    assert run(capsys, api, "rollout", "approve", rid)["state"] == "running"
    # the watch returns once the rollout is final: a line each time it changed, the last one
    # the final state
    lines = run(capsys, api, "rollout", "show", rid, "--watch", "--interval", "0.2", output="table")
    assert "wave 2: 1/1 succeeded=1" in lines.splitlines()[-1]
    assert "completed" in lines.splitlines()[-1]
    shown = run(capsys, api, "rollout", "show", rid)
    assert shown["state"] == "completed"
    assert [e["reason"] for e in shown["timeline"]][-1] == "all_waves_passed"
    assert [r["id"] for r in run(capsys, api, "rollout", "list")] == [rid]
    assert all(t["converged"] for t in run(capsys, api, "targets"))

    aborted = run(capsys, api, "rollout", "abort", rid, "--revert")
    assert aborted["state"] == "reverting"
    wait_until("reverted", lambda: run(capsys, api, "rollout", "show", rid)["state"] == "reverted")
    assert {a.agent.device: a.active.digest for a in agents} == {
        f"cam-{i}": infos[1].digest for i in range(3)
    }


@SQLITE_ONLY
def test_device_and_group_commands_from_the_cli(capsys, controller, fleet3):
    agents, _ = fleet3
    api = controller.api_url
    sent = run(capsys, api, "restart-pipeline", "cam-0")
    assert sent[0]["device"] == "cam-0" and sent[0]["cmd_id"]
    run(capsys, api, "group", "set", "all", "--online")
    sent = run(capsys, api, "rollback", "--group", "all")
    assert sorted(s["device"] for s in sent) == ["cam-0", "cam-1", "cam-2"]
    wait_until(
        "rollbacks", lambda: all(any(isinstance(c, Rollback) for c in a.received) for a in agents)
    )
    sent = run(capsys, api, "set-config", "cam-1", "--config", '{"log_level": "debug"}')
    assert sent[0]["cmd_id"]
    capsys.readouterr()
    assert main(["--api", api, "set-config", "cam-1", "--config", '{"log_level": 5']) == 2
    assert "not JSON" in capsys.readouterr().err
    code = main(["--api", api, "rollout", "show", "nope"])
    assert code == 1
    assert "no rollout 'nope'" in capsys.readouterr().err
