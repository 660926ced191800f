"""Choosing where a runtime runs: probes in short-lived processes, workers from the profile."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from agent.runtimes.base import probe_runtime
from agent.runtimes.probing import parse_probes, probe_in_subprocess
from agent.runtimes.worker.launch import WorkerLaunch
from agent.runtimes.worker.proxy import WorkerRuntime
from agent.selection import PROBED_RUNTIMES, RuntimeHosts, choose_device, probe_runtimes
from device_profiles.schema import RuntimeWorker


def test_a_probe_in_a_child_process_says_what_one_in_process_says() -> None:
    keys = ["litert", "onnx", "tensorrt"]
    assert probe_in_subprocess(keys) == [probe_runtime(key) for key in keys]


def test_a_child_that_prints_garbage_makes_every_runtime_unavailable_with_why() -> None:
    probes = probe_in_subprocess(["no-such-runtime"])
    assert len(probes) == 1 and not probes[0].available
    assert "unknown runtime key" in probes[0].reason


def test_parse_refuses_output_missing_a_key() -> None:
    with pytest.raises(KeyError):
        parse_probes(b"[]", ["litert"])


def test_the_profile_worker_is_probed_under_its_interpreter(tmp_path) -> None:
    hosts = RuntimeHosts({"litert": WorkerLaunch(python=sys.executable, shm_dir=tmp_path)})
    probes = {p.key: p for p in probe_runtimes(hosts)}
    assert [p.key for p in probe_runtimes(None)] == [str(k) for k in PROBED_RUNTIMES]
    assert set(probes) == {str(k) for k in PROBED_RUNTIMES}
    assert probes["litert"].available
    assert "worker python" in probes["litert"].reason
    assert "worker python" not in probes["onnx"].reason


def test_hosts_give_the_worker_class_only_for_worker_runtimes(tmp_path) -> None:
    hosts = RuntimeHosts({"litert": WorkerLaunch(python=sys.executable, shm_dir=tmp_path)})
    runtime_class = hosts.runtime_class("litert")
    assert runtime_class is not None and issubclass(runtime_class, WorkerRuntime)
    assert runtime_class.KEY == "litert"
    assert hosts.runtime_class("litert") is runtime_class
    assert hosts.runtime_class("onnx") is None


def test_a_worker_whose_interpreter_is_missing_runs_in_process(tmp_path) -> None:
    present = RuntimeWorker(python=sys.executable, python_version="3.11")
    missing = RuntimeWorker(python=str(tmp_path / "python3.6"), python_version="3.6")
    hosts = RuntimeHosts.from_profile({"litert": present, "tensorrt": missing})
    assert set(hosts.launches) == {"litert"}
    assert hosts.launches["litert"].python == sys.executable


def test_a_forced_profile_carries_its_workers() -> None:
    device = choose_device("jetson-nano")
    assert device.profile == "jetson-nano"
    assert Path(device.workers["tensorrt"].python) == Path("/usr/bin/python3")
    assert choose_device("generic-x86-64").workers == {}


def test_worker_crashes_reach_the_outbox_as_error_events(tmp_path) -> None:
    from agent.daemon import Agent
    from agent.runtimes.worker.launch import WorkerEvent, WorkerEventKind
    from agent.settings import AgentSettings
    from protocol.codec import decode
    from protocol.events import EventKind, EventLevel
    from protocol.messages import Event

    agent = Agent(AgentSettings(device_id="worker-events-1", data_dir=tmp_path))
    try:
        agent._worker_event(WorkerEvent(WorkerEventKind.CRASHED, "litert", "exit status -9", 1, 0))
        agent._worker_event(WorkerEvent(WorkerEventKind.RESTARTED, "litert", "pid 7", 1, 1))
        events = [decode(item.payload, Event) for item in agent.outbox.oldest(10)]
        # no model, no worker: health lists none
        assert agent._runtime_workers() == ()
    finally:
        agent.outbox.close()
    assert [(e.kind, e.level) for e in events] == [
        (EventKind.ERROR, EventLevel.ERROR),
        (EventKind.ERROR, EventLevel.WARNING),
    ]
    assert events[0].message.startswith("worker_crashed runtime=litert crashes=1")
    assert "exit status -9" in events[0].message


def test_an_agent_runs_a_bundle_in_the_worker_its_settings_name(
    tmp_path, build_blazeface, trust
) -> None:
    from agent.daemon import Agent
    from agent.runtimes.worker.proxy import WorkerRuntime
    from agent.settings import AgentSettings
    from ota.install import SlotStore

    built = build_blazeface(version=1)
    installed = SlotStore(tmp_path / "agent" / "bundles").install(
        built.path, trust, built.manifest.created
    )
    settings = AgentSettings(
        device_id="worker-agent-1",
        data_dir=tmp_path / "agent",
        profile="generic-x86-64",
        runtime_workers={"litert": {"python": sys.executable, "python_version": "3.11"}},
    )
    agent = Agent(settings)
    try:
        litert = next(p for p in agent.probes if p.key == "litert")
        assert litert.available and "worker python" in litert.reason
        agent.activate(installed)
        model = agent.pipeline.current()
        assert model is not None and model.runtime == "litert"
        runtime = model.detector.inner.runtime  # type: ignore[attr-defined]
        assert isinstance(runtime, WorkerRuntime) and runtime.pid is not None
        pid = runtime.pid
        # the worker is listed in the agent's health, with no crash yet
        (worker,) = agent._runtime_workers()
        assert (worker.runtime, worker.state, worker.pid) == ("litert", "running", pid)
        assert (worker.crashes, worker.restarts) == (0, 0)
    finally:
        model = agent.pipeline.swap(None)
        if model is not None:
            model.close()
        agent.outbox.close()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the worker ended with its model
