"""Agent settings: the YAML file, EDGEFLEET_AGENT_* variables over it, and the device's own tags
carried in every state it publishes (online, offline and its last will)."""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import ValidationError

from agent.cli import main
from agent.daemon import Agent
from agent.settings import AgentSettings
from protocol.codec import decode
from protocol.events import RuntimeKey
from protocol.messages import State
from protocol.topics import Topics


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # an agent variable of the machine running the tests must not leak into them
    for name in list(os.environ):
        if name.upper().startswith("EDGEFLEET_AGENT_") or name.upper() == "EDGEFLEET_TAGS":
            monkeypatch.delenv(name)


def _write(path: Path, document: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(document))
    return path


def test_the_environment_wins_over_the_file_and_merges_into_nested_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _write(
        tmp_path / "agent.yaml",
        {
            "device_id": "from-file",
            "mqtt": {"host": "broker.file", "port": 1999},
            "health_interval_s": 7,
        },
    )
    monkeypatch.setenv("EDGEFLEET_AGENT_DEVICE_ID", "from-env")
    monkeypatch.setenv("edgefleet_agent_mqtt__host", "broker.env")  # any case
    monkeypatch.setenv("EDGEFLEET_AGENT_RUNTIME_WORKERS__LITERT__PYTHON", "/usr/bin/python3")
    monkeypatch.setenv("EDGEFLEET_AGENT_RUNTIME_WORKERS__LITERT__PYTHON_VERSION", "3.11")
    monkeypatch.setenv("EDGEFLEET_AGENT_CAMERAS", '[{"id": "door", "source": "0"}]')
    monkeypatch.setenv("EDGEFLEET_AGENT_FAULT", "none")  # not a setting: left alone
    settings = AgentSettings.load(config, data_dir=tmp_path / "agent")
    assert settings.device_id == "from-env"
    assert (settings.mqtt.host, settings.mqtt.port) == ("broker.env", 1999)
    assert settings.health_interval_s == 7
    assert str(settings.runtime_workers[RuntimeKey.LITERT].python) == "/usr/bin/python3"
    assert [(c.id, c.source) for c in settings.cameras] == [("door", "0")]
    assert settings.data_dir == tmp_path / "agent"


def test_bad_settings_are_refused_with_what_is_wrong(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ValidationError, match=r"mqtt\.nope"):
        AgentSettings(data_dir=tmp_path, mqtt={"nope": 1})
    with pytest.raises(ValidationError, match="unknown_field"):
        AgentSettings(data_dir=tmp_path, unknown_field=1)
    monkeypatch.setenv("EDGEFLEET_AGENT_CAMERAS", "door=0")
    with pytest.raises(ValueError, match="EDGEFLEET_AGENT_CAMERAS: not valid JSON"):
        AgentSettings(data_dir=tmp_path)
    # the operator's command line says so in one line and exits 2
    config = _write(tmp_path / "agent.yaml", {"data_dir": str(tmp_path)})
    assert main(["run", "--config", str(config)]) == 2
    assert "EDGEFLEET_AGENT_CAMERAS: not valid JSON" in capsys.readouterr().err


def test_tags_come_from_the_file_or_a_comma_separated_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _write(tmp_path / "agent.yaml", {"tags": ["site-a", "roof", "site-a"]})
    assert AgentSettings.load(config).tags == ["site-a", "roof"]  # a repeat says nothing new
    assert AgentSettings(tags="lobby, cam:outdoor,,").tags == ["lobby", "cam:outdoor"]
    monkeypatch.setenv("EDGEFLEET_TAGS", "short-name")
    assert AgentSettings.load(config).tags == ["short-name"]
    monkeypatch.setenv("EDGEFLEET_AGENT_TAGS", " north , v2.1 ")  # the agent's own name wins
    assert AgentSettings.load(config).tags == ["north", "v2.1"]
    monkeypatch.setenv("EDGEFLEET_AGENT_TAGS", '["json_list"]')
    assert AgentSettings().tags == ["json_list"]
    monkeypatch.setenv("EDGEFLEET_AGENT_TAGS", "")
    assert AgentSettings.load(config).tags == []


@pytest.mark.parametrize(
    ("tags", "problem"),
    [
        ("fine, not fine", "tags.1"),
        (["ok", "x" * 65], "tags.1"),
        ([""], "tags.0"),
        ([f"t{i}" for i in range(33)], "at most 32"),
        ([7], "tags.0"),
    ],
)
def test_a_bad_tag_is_refused_by_name(tags: Any, problem: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(problem)):
        AgentSettings(tags=tags)


def test_a_bad_tag_in_the_environment_stops_the_cli_with_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("EDGEFLEET_AGENT_TAGS", "ok,bad tag")
    config = _write(tmp_path / "agent.yaml", {"data_dir": str(tmp_path)})
    assert main(["run", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "tags.1" in err and "String should match pattern" in err


class StateWatcher:
    """Every state message the device publishes, retained or not."""

    def __init__(self, port: int, device: str) -> None:
        self.states: queue.Queue[State] = queue.Queue()
        subscribed = threading.Event()
        topic = Topics().state(device)
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"watch-{device}")
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = lambda c, u, m: self.states.put(decode(m.payload, State))
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert subscribed.wait(10), "never subscribed"

    def next(self, status: str, timeout: float = 20) -> State:
        deadline = time.monotonic() + timeout
        while True:
            state = self.states.get(timeout=max(0.1, deadline - time.monotonic()))
            if state.status == status:
                return state

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_every_state_the_agent_publishes_carries_its_tags(
    tmp_path: Path, mosquitto: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGEFLEET_AGENT_TAGS", "site-a,roof")
    document = {
        "device_id": "tagged-1",
        "data_dir": str(tmp_path / "agent"),
        "mqtt": {"port": mosquitto.port, "keepalive": 5},
        "profile": "generic-x86-64",
        "health_interval_s": 600,
        "log_level": "WARNING",
    }
    watcher = StateWatcher(mosquitto.port, "tagged-1")
    try:
        agent = Agent(AgentSettings(**document))
        thread = threading.Thread(target=agent.run, daemon=True)
        thread.start()
        assert watcher.next("online").tags == ("site-a", "roof")
        agent.stop()
        thread.join(30)
        assert not thread.is_alive()
        assert watcher.next("offline").tags == ("site-a", "roof")
        # killed, the agent says nothing: the broker publishes its last will, tags and all
        config = _write(tmp_path / "agent.yaml", document)
        process = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "run", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            assert watcher.next("online", timeout=60).tags == ("site-a", "roof")
        finally:
            process.kill()
            process.wait(10)
        assert watcher.next("offline", timeout=30).tags == ("site-a", "roof")
    finally:
        watcher.close()
