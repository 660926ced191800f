"""A root rotation pushed over MQTT to a real agent process, and the revoked key refused there."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest

from controller.cli.main import main as edgefleet
from controller.demo.processes import spawn_agent, stop_agent, write_agent_config
from controller.demo.waiting import wait_until
from controller.server import Controller
from controller.settings import ControllerSettings, HttpSettings, MqttSettings
from ota.build import BundleSpec, VariantSource, build_bundle
from ota.keys import SigningKey
from ota.manifest import InputSpec, PostprocessSpec
from ota.trust import TrustStore
from ota.trust_file import load_trust_store, save_trust_store
from tests.controller.operators import api_client, make_token

pytestmark = pytest.mark.e2e

DEVICE = "e2e-trust-01"


def signed_bundle(tmp_path: Path, key: SigningKey) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "model.tflite").write_bytes(os.urandom(20_000))
    spec = BundleSpec(
        name="face",
        version=1,
        labels=("face",),
        input=InputSpec(width=128, height=128),
        postprocess=PostprocessSpec(kind="blazeface"),
        variants=(VariantSource(runtime="litert", model="model.tflite"),),
    )
    out = tmp_path / "face.bundle"
    return build_bundle(spec, src, [key], out, datetime.now(timezone.utc)).path


@pytest.fixture
def fleet(tmp_path: Path, mosquitto, monkeypatch):
    """A keys folder at root v1, a controller, and an agent process whose trust is root v1.

    The controller checks uploads against a plain store of the first release key, so a bundle
    signed by that key reaches the device even after the device has revoked it.
    """
    keys = tmp_path / "keys"
    assert edgefleet(["keys", "init", "--dir", str(keys)]) == 0
    controller_trust = tmp_path / "controller-trust.json"
    first_release = SigningKey.load(keys / "release" / "release-1.pem")
    save_trust_store(TrustStore.from_keys([first_release.public_key()]), controller_trust)
    controller = Controller(
        ControllerSettings(
            data_dir=tmp_path / "controller",
            mqtt=MqttSettings(port=mosquitto.port, client_id="e2e-trust-controller"),
            http=HttpSettings(port=0),
            trust_path=controller_trust,
            command_key_path=keys / "command" / "command-1.pem",
        )
    ).start()
    agent_dir = tmp_path / "agent"
    agent_dir.mkdir()
    shutil.copy(keys / "root.1.json", agent_dir / "trust.json")
    config = {
        "device_id": DEVICE,
        "data_dir": str(agent_dir),
        "mqtt": {"host": "127.0.0.1", "port": mosquitto.port, "keepalive": 5},
        "health_interval_s": 1.0,
    }
    agent = spawn_agent(write_agent_config(agent_dir, config), tmp_path / "agent.log")
    http = api_client(controller.api_url, controller.sessions)
    # `edgefleet trust push` signs in with the token in the environment, as an operator would
    monkeypatch.setenv("EDGEFLEET_TOKEN", make_token(controller.sessions, "operator"))
    try:
        yield keys, agent_dir / "trust.json", controller, http
    finally:
        http.close()
        stop_agent(agent)
        controller.stop()
        if agent.returncode not in (0, -signal.SIGTERM):
            sys.stderr.write((tmp_path / "agent.log").read_text()[-4000:])


def ack_for(http: httpx.Client, cmd_id: str) -> dict | None:
    found = http.get("/api/events", params={"device": DEVICE, "kind": "ack", "limit": 50}).json()
    return next((e for e in found if e["cmd_id"] == cmd_id), None)


def push(api: str, *roots: Path, capsys) -> str:
    capsys.readouterr()
    assert edgefleet(["--api", api, "--output", "json", "trust", "push", *map(str, roots)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["device"] for r in rows] == [DEVICE]
    return rows[0]["cmd_id"]


def test_root_rotation_pushed_over_mqtt_revokes_a_release_key(fleet, tmp_path, capsys):
    keys, device_trust, controller, http = fleet
    wait_until("the device to register", lambda: http.get("/api/devices").json())
    old_release = SigningKey.load(keys / "release" / "release-1.pem")
    assert edgefleet(["keys", "add-release", "--dir", str(keys)]) == 0
    assert edgefleet(["keys", "revoke-release", "--dir", str(keys), old_release.keyid]) == 0
    assert edgefleet(["keys", "rotate-root", "--dir", str(keys)]) == 0
    api = controller.api_url

    # v3 alone skips v2 (same root keys, so only the version gives it away)
    skipped = push(api, keys / "root.3.json", capsys=capsys)
    ack = wait_until("the refusal", lambda: ack_for(http, skipped))
    assert ack["reason"] == "root_version" and ack["level"] == "error"
    assert load_trust_store(device_trust).root_version == 1

    # the controller checks a chain before sending it anywhere
    junk = http.post("/api/trust", content=b"{}")
    assert junk.status_code == 422 and junk.json()["detail"]["reason"] == "malformed_root"
    gap = {"roots": [(keys / f"root.{n}.json").read_text() for n in (2, 4)]}
    broken = http.post("/api/trust", json=gap)
    assert broken.status_code == 422 and broken.json()["detail"]["reason"] == "root_version"

    chain = [keys / f"root.{n}.json" for n in (2, 3, 4)]
    pushed = push(api, *chain, capsys=capsys)
    ack = wait_until("the trust update", lambda: ack_for(http, pushed))
    assert ack["reason"] == "trusted", ack
    assert device_trust.read_bytes() == (keys / "root.4.json").read_bytes()

    bundle = signed_bundle(tmp_path, old_release)
    upload = http.post("/api/bundles", content=bundle.read_bytes())
    assert upload.status_code == 201, upload.text
    digest = upload.json()["digest"]
    sent = http.post("/api/deployments", json={"device": DEVICE, "bundle": digest})
    assert sent.status_code == 202, sent.text

    def refused() -> dict | None:
        found = http.get("/api/events", params={"device": DEVICE, "limit": 100}).json()
        return next((e for e in found if e["kind"] == "failed" and e["bundle"] == digest), None)

    assert wait_until("the device's refusal", refused)["reason"] == "revoked_key"
