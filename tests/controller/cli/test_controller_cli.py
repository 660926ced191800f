"""The `edgefleet` CLI against a started controller, and the controller's settings."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from controller.cli.main import main
from controller.demo.broker import free_port
from controller.demo.waiting import wait_until
from controller.settings import ControllerSettings, load_settings
from protocol.events import EventKind, EventLevel
from protocol.messages import Box, Detection, DetectionBatch, Event
from tests.controller.cli.controller_process import run_until_ready
from tests.controller.fake_agents import FakeAgent

SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@pytest.fixture
def agent(mosquitto):
    one = FakeAgent(mosquitto.host, mosquitto.port, "cam-a")
    yield one
    one.close()


def run_json(capsys, api: str, *argv: str):
    capsys.readouterr()
    code = main(["--api", api, "--output", "json", *argv])
    out = capsys.readouterr().out
    assert code == 0, out
    return json.loads(out)


@SQLITE_ONLY
def test_cli_commands_show_what_the_controller_has(capsys, controller, agent, make_bundle):
    api = controller.api_url
    agent.online(profile="rpi4")
    box = Box(x1=0.1, y1=0.1, x2=0.2, y2=0.2)
    det = Detection(camera="cam0", label="person", score=0.7, box=box, ts=5.0)
    agent.send(DetectionBatch(device="cam-a", detections=(det,)), "det")
    agent.send(
        Event(device="cam-a", kind=EventKind.ERROR, level=EventLevel.ERROR, message="camera lost"),
        "evt",
    )
    wait_until("event via the CLI", lambda: run_json(capsys, api, "events"))
    wait_until("detection via the CLI", lambda: run_json(capsys, api, "detections"))

    assert [d["id"] for d in run_json(capsys, api, "devices")] == ["cam-a"]
    found = run_json(capsys, api, "detections", "--limit", "5", "--device", "cam-a")
    assert [(d["id"], d["label"]) for d in found] == [(det.id, "person")]
    assert run_json(capsys, api, "detections", "--device", "cam-b") == []
    assert [e["message"] for e in run_json(capsys, api, "events")] == ["camera lost"]

    built = make_bundle()
    uploaded = run_json(capsys, api, "bundle", "upload", str(built.path))
    assert uploaded["digest"] == built.digest
    assert [b["digest"] for b in run_json(capsys, api, "bundles")] == [built.digest]
    deployment = run_json(capsys, api, "deploy", "cam-a", built.digest)
    assert (deployment["device"], deployment["status"]) == ("cam-a", "sent")
    assert [d["id"] for d in run_json(capsys, api, "deployments")] == [deployment["id"]]
    # --output also works after the subcommand
    assert main(["--api", api, "devices", "--output", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["profile"] == "rpi4"


@SQLITE_ONLY
def test_cli_tables_are_readable(capsys, controller, agent):
    agent.online(profile="coral-usb")
    wait_until("device", lambda: run_json(capsys, controller.api_url, "devices"))
    assert main(["--api", controller.api_url, "devices"]) == 0
    out = capsys.readouterr().out
    assert "cam-a" in out and "coral-usb" in out and "online" in out


def test_unreachable_controller_is_one_line_and_exit_code_3(capsys):
    code = main(["--api", f"http://127.0.0.1:{free_port()}", "devices"])
    err = capsys.readouterr().err
    assert code == 3
    assert err.startswith("edgefleet: cannot reach the controller at http://127.0.0.1:")
    assert err.count("\n") == 1 and "Traceback" not in err


@SQLITE_ONLY
def test_api_errors_exit_1_with_the_reason(capsys, controller, tmp_path):
    assert main(["--api", controller.api_url, "deploy", "cam-zz", "0" * 64]) == 1
    assert "HTTP 404" in capsys.readouterr().err
    junk = tmp_path / "junk.bundle"
    junk.write_bytes(b"junk" * 100)
    assert main(["--api", controller.api_url, "bundle", "upload", str(junk)]) == 1
    assert "HTTP 422: malformed_bundle" in capsys.readouterr().err


@SQLITE_ONLY
def test_controller_run_serves_until_sigterm(tmp_path, mosquitto, db_url):
    output = run_until_ready(tmp_path, mosquitto.port, db_url, "cli-run", "/healthz")
    assert "event=controller_started" in output and "event=controller_stopped" in output


def test_settings_from_file_env_wins_and_unknown_keys_are_refused(tmp_path, monkeypatch):
    config = tmp_path / "c.json"
    config.write_text(
        json.dumps(
            {
                "mqtt": {
                    "host": "broker.local",
                    "port": 1884,
                    # beyond loopback the broker is reached over TLS only
                    "ca_file": "ca.pem",
                    "cert_file": "controller.pem",
                    "key_file": "controller.key",
                },
                "max_inflight": 7,
            }
        )
    )
    monkeypatch.setenv("EDGEFLEET_MQTT__PORT", "1999")
    settings = load_settings(config)
    assert (settings.mqtt.host, settings.mqtt.port, settings.max_inflight) == (
        "broker.local",
        1999,
        7,
    )
    assert settings.resolved_database_url().startswith("sqlite:///")
    assert settings.resolved_database_url().endswith("controller.db")
    with pytest.raises(ValidationError):
        ControllerSettings(bogus=1)  # type: ignore[call-arg]
    config.write_text(json.dumps({"mqtt": {"hots": "typo"}}))
    with pytest.raises(ValidationError):
        load_settings(config)
