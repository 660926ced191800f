"""A controller, a restartable agent process and an MQTT observer, all on the test's mosquitto."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from controller.demo.processes import spawn_agent, stop_agent
from controller.demo.sample_video import Placement, write_sample_video
from controller.server import Controller
from controller.settings import ControllerSettings, HttpSettings, MqttSettings
from ota.install import InstalledBundle, SlotStore
from ota.trust import TrustStore
from ota.trust_file import save_trust_store
from protocol.codec import decode_agent_message
from protocol.messages import DetectionBatch, Event, Health, State
from protocol.topics import Topics
from tests.controller.operators import api_client

FLEET_DEVICE = "kill-cam-01"


@dataclass
class Observed:
    """What one observer saw, in arrival order; `mark()` splits before/after a restart."""

    events: list[Event] = field(default_factory=list)
    states: list[State] = field(default_factory=list)
    detections: int = 0
    frames_processed: int = 0  # from the latest health message, all cameras


class Observer:
    """Subscribes to the device's topics; tests await what it records."""

    def __init__(self, port: int, device: str) -> None:
        self.topics = Topics()
        self.device = device
        self.seen = Observed()
        self._cond = threading.Condition()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"observer-{os.getpid()}")
        subscribed = threading.Event()
        client.on_message = self._on_message
        client.on_connect = lambda c, *_: c.subscribe(f"{self.topics.prefix}/dev/{device}/#", 1)
        client.on_subscribe = lambda *_: subscribed.set()
        client.connect("127.0.0.1", port)
        client.loop_start()
        self.client = client
        if not subscribed.wait(10):
            self.close()
            raise AssertionError("observer could not subscribe")

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        parts = msg.topic.split("/")
        with self._cond:
            if parts[-1] in ("evt", "state", "det", "health"):
                _, message = decode_agent_message(self.topics, msg.topic, msg.payload)
                if isinstance(message, Event):
                    self.seen.events.append(message)
                elif isinstance(message, State):
                    self.seen.states.append(message)
                elif isinstance(message, DetectionBatch):
                    self.seen.detections += len(message.detections)
                elif isinstance(message, Health):
                    self.seen.frames_processed = sum(c.frames_processed for c in message.cameras)
            self._cond.notify_all()

    def wait(self, what: str, check, timeout: float = 60.0):
        """Block until `check(seen)` is truthy (re-checked on each message); returns it."""
        result = None

        def ready() -> bool:
            nonlocal result
            result = check(self.seen)
            return bool(result)

        with self._cond:
            if not self._cond.wait_for(ready, timeout):
                seen = self.seen
                raise AssertionError(
                    f"timed out waiting for {what}; saw {len(seen.events)} events, "
                    f"{seen.detections} detections, {seen.frames_processed} frames processed"
                )
        return result

    def events(self, kind: str, bundle: str | None = None, since: int = 0) -> list[Event]:
        with self._cond:
            found = self.seen.events[since:]
        return [e for e in found if e.kind == kind and (bundle is None or e.bundle == bundle)]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def slot_files_intact(bundle: InstalledBundle) -> bool:
    """Every file the manifest lists is on disk with its size and sha256."""
    for entry in bundle.manifest.all_files().values():
        data = bundle.path_of(entry.path).read_bytes()
        if len(data) != entry.size or hashlib.sha256(data).hexdigest() != entry.sha256:
            return False
    return True


class KillFleet:
    """One controller and one agent that tests start, kill and start again."""

    def __init__(
        self, tmp_path: Path, broker_port: int, trust: TrustStore, command_key: Path
    ) -> None:
        self.tmp_path = tmp_path
        self.trust = trust
        settings = ControllerSettings(
            data_dir=tmp_path / "controller",
            mqtt=MqttSettings(port=broker_port, client_id="kill-controller"),
            http=HttpSettings(port=0),
            trust_path=self._save_trust(tmp_path / "controller-trust.json"),
            command_key_path=command_key,
            # small chunks, so a download has enough of them to be cut in the middle
            chunk_size=16 * 1024,
        )
        self.controller = Controller(settings).start()
        self.http = api_client(self.controller.api_url, self.controller.sessions)
        self.agent_dir = tmp_path / "agent"
        self.agent_dir.mkdir()
        self._save_trust(self.agent_dir / "trust.json")
        video = write_sample_video(
            tmp_path / "astronaut.avi",
            fps=10,
            seconds_per_image=3.0,
            scenes=[("astronaut", Placement("astronaut"))],
        )
        config = {
            "device_id": FLEET_DEVICE,
            "data_dir": str(self.agent_dir),
            "mqtt": {"host": "127.0.0.1", "port": broker_port, "keepalive": 5},
            "cameras": [{"id": "cam0", "source": str(video.path), "loop": True}],
            "health_interval_s": 1.0,
            "chunk_request_timeout_s": 2.0,
            "probation_s": 1.0,
            "max_probation_attempts": 2,
        }
        self.config = self.agent_dir / "agent.yaml"
        self.config.write_text(yaml.safe_dump(config))
        self.log_path = tmp_path / "agent.log"
        self.observer = Observer(broker_port, FLEET_DEVICE)
        self.agent: subprocess.Popen[bytes] | None = None

    def _save_trust(self, path: Path) -> Path:
        save_trust_store(self.trust, path)
        return path

    @property
    def store(self) -> SlotStore:
        return SlotStore(self.agent_dir / "bundles")

    def preinstall(self, bundle_path: Path) -> InstalledBundle:
        """Install and commit a bundle before the agent first starts (as `bundle install`)."""
        store = self.store
        installed = store.install(bundle_path, self.trust, datetime.now(timezone.utc))
        store.commit(installed.digest)
        return installed

    def start_agent(self, fault: str | None = None) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if k != "EDGEFLEET_AGENT_FAULT"}
        if fault:
            env["EDGEFLEET_AGENT_FAULT"] = fault
        with self.log_path.open("ab") as log:
            log.write(f"---- agent start, fault={fault}\n".encode())
        self.agent = spawn_agent(self.config, self.log_path, env)
        return self.agent

    def wait_killed(self, timeout: float = 60.0) -> None:
        assert self.agent is not None
        code = self.agent.wait(timeout=timeout)
        assert code == -signal.SIGKILL, f"agent exited with {code}, not by its fault"

    def deploy(self, bundle_path: Path) -> str:
        response = self.http.post("/api/bundles", content=bundle_path.read_bytes())
        assert response.status_code == 201, response.text
        digest = response.json()["digest"]
        response = self.http.post(
            "/api/deployments", json={"device": FLEET_DEVICE, "bundle": digest}
        )
        assert response.status_code == 202, response.text
        return digest

    def device(self) -> dict:
        found = self.http.get("/api/devices").json()
        return next((d for d in found if d["id"] == FLEET_DEVICE), {})

    def close(self) -> None:
        if self.agent is not None:
            stop_agent(self.agent)
        self.observer.close()
        self.http.close()
        self.controller.stop()


@pytest.fixture
def kill_fleet(tmp_path, mosquitto, trust, command_key_file, request):
    fleet = KillFleet(tmp_path, mosquitto.port, trust, command_key_file)
    try:
        yield fleet
    finally:
        fleet.close()
        failed = getattr(request.node, "rep_call", None)
        if failed is not None and failed.failed and fleet.log_path.exists():
            sys.stderr.write(fleet.log_path.read_text()[-6000:])


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call":
        item.rep_call = report
    return report
