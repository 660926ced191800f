"""The real agent and controller, unchanged, on RabbitMQ's MQTT plugin (a broker that clusters
natively): a signed bundle deployed over MQTT chunks ends running, and what the agent reports
is stored.

`scripts/system-packages.sh` enables the plugin on 127.0.0.1:1884 (mosquitto keeps 1883).
RabbitMQ 3.x has no shared subscriptions, so the controller runs one plain ingest session there
(`ingest.sessions = 1`); that is configuration, not code.
"""

from __future__ import annotations

import shutil
import socket
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import func, select

from controller.db import DetectionRow
from controller.demo.waiting import wait_until
from protocol.topics import Topics
from tests.e2e.conftest import FLEET_DEVICE, KillFleet

pytestmark = pytest.mark.e2e

RABBITMQ_MQTT_PORT = 1884


def _rabbitmq_port() -> int:
    installed = shutil.which("rabbitmq-server") or Path("/usr/sbin/rabbitmq-server").exists()
    if not installed:
        pytest.skip("RabbitMQ is not installed on this machine")
    try:
        with socket.create_connection(("127.0.0.1", RABBITMQ_MQTT_PORT), timeout=2):
            return RABBITMQ_MQTT_PORT
    except OSError:
        pytest.fail(
            "RabbitMQ is installed but its MQTT plugin does not listen on 127.0.0.1:1884: "
            "run scripts/system-packages.sh as root (make setup)"
        )


def _forget_earlier_runs(port: int) -> None:
    """RabbitMQ keeps persistent sessions and retained messages across runs: clear ours."""
    for client_id in ("kill-controller", FLEET_DEVICE):
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
        client.connect("127.0.0.1", port)
        client.loop_start()
        client.disconnect()
        client.loop_stop()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"clear-{uuid.uuid4().hex[:6]}")
    client.connect("127.0.0.1", port)
    client.loop_start()
    client.publish(Topics().state(FLEET_DEVICE), b"", qos=1, retain=True).wait_for_publish(10)
    client.disconnect()
    client.loop_stop()


@pytest.fixture
def rabbit_fleet(tmp_path, trust, command_key_file, monkeypatch, request):
    port = _rabbitmq_port()
    _forget_earlier_runs(port)
    monkeypatch.setenv("EDGEFLEET_INGEST__SESSIONS", "1")
    fleet = KillFleet(tmp_path, port, trust, command_key_file)
    try:
        yield fleet
    finally:
        fleet.close()
        _forget_earlier_runs(port)
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed and fleet.log_path.exists():
            print(fleet.log_path.read_text()[-6000:])


def test_agent_and_controller_work_unchanged_on_rabbitmq(rabbit_fleet, build_blazeface):
    fleet = rabbit_fleet
    assert fleet.controller.ingest.share_group == ""  # a plain subscription on RabbitMQ 3.x
    old = fleet.preinstall(build_blazeface(version=1).path)
    fleet.start_agent()
    fleet.observer.wait(
        "agent online",
        lambda seen: any(s.status == "online" and s.active for s in seen.states),
    )
    wait_until("controller knows the agent", lambda: fleet.device().get("online"), 60)
    assert fleet.device()["active_digest"] == old.digest

    new = build_blazeface(version=2)
    digest = fleet.deploy(new.path)  # small: delivered as MQTT chunks through RabbitMQ
    fleet.observer.wait(
        "running on the new bundle",
        lambda seen: any(e.kind == "running" and e.bundle == digest for e in seen.events),
        120,
    )
    wait_until(
        "controller shows the new bundle",
        lambda: fleet.device().get("active_digest") == digest,
        60,
    )

    def detections() -> int:
        with fleet.controller.sessions() as s:
            return s.scalar(select(func.count()).select_from(DetectionRow)) or 0

    wait_until("detections stored", lambda: detections() > 0, 60)
    statuses = fleet.http.get("/api/deployments").json()
    mine = [d for d in statuses if d["bundle"] == digest]
    assert mine and mine[0]["status"] == "running", mine
