"""Fault injection: parsed from the environment, and a real SIGKILL at the named stage."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from agent.deploy.faults import FaultSpecError, KillAt, fault_point_from_env, no_fault


def test_unset_or_empty_variable_gives_the_no_op_fault_point():
    assert fault_point_from_env({}) is no_fault
    assert fault_point_from_env({"EDGEFLEET_AGENT_FAULT": " "}) is no_fault


def test_stage_and_count_are_parsed():
    point = fault_point_from_env({"EDGEFLEET_AGENT_FAULT": "download:7"})
    assert isinstance(point, KillAt)
    assert (point.stage, point.count) == ("download", 7)
    once = fault_point_from_env({"EDGEFLEET_AGENT_FAULT": "switch"})
    assert isinstance(once, KillAt) and once.count == 1


@pytest.mark.parametrize("spec", ["nowhere", "download:x", "unpack:0", ":3"])
def test_a_bad_spec_is_refused(spec):
    with pytest.raises(FaultSpecError):
        fault_point_from_env({"EDGEFLEET_AGENT_FAULT": spec})


def test_the_process_is_killed_at_the_counted_pass_of_its_stage_only():
    script = (
        "import sys\n"
        "from agent.deploy.faults import fault_point_from_env\n"
        "point = fault_point_from_env()\n"
        "for stage in ['download', 'unpack', 'download', 'switch']:\n"
        "    print(stage, flush=True)\n"
        "    point(stage)\n"
        "print('survived', flush=True)\n"
    )
    env_run = subprocess.run(
        [sys.executable, "-c", script],
        env={"EDGEFLEET_AGENT_FAULT": "download:2", "PYTHONPATH": "."},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert env_run.returncode == -signal.SIGKILL
    assert env_run.stdout.split() == ["download", "unpack", "download"]
