"""The demo run: controller + local broker + one local agent on a sample video, one command.

Everything real: a mosquitto (or in-process broker), the controller with SQLite, an agent
process, a BlazeFace bundle built and signed here and delivered over MQTT. The command line
(`edgefleet demo`) lives in controller/cli/demo.py.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx

from controller.auth.tokens import issue_token
from controller.auth.users import Role, create_user
from controller.demo.broker import (
    BrokerError,
    InProcessBroker,
    MosquittoBroker,
    free_port,
    start_local_broker,
    start_secure_broker,
)
from controller.demo.processes import spawn_agent, stop_agent, write_agent_config
from controller.demo.sample_video import write_sample_video
from controller.demo.waiting import WaitTimedOut, wait_until
from controller.release.recipes import example_spec
from controller.server import Controller
from controller.settings import (
    ControllerSettings,
    EnrollmentSettings,
    HttpSettings,
    MqttSettings,
)
from ota.build import build_bundle
from ota.keys import SigningKey
from ota.trust import TrustStore
from ota.trust_file import save_trust_store
from protocol.topics import Topics

DEVICE_ID = "demo-cam-01"


class DemoError(RuntimeError):
    """The demo could not reach a running state; the message says which step failed."""


@dataclass
class DemoResult:
    devices: int
    frames: int
    detections: int
    fps: float
    bundle: str
    runtime: str

    def line(self) -> str:
        return (
            f"RESULT devices={self.devices} frames={self.frames} detections={self.detections} "
            f"fps={self.fps:.1f} bundle={self.bundle} runtime={self.runtime}"
        )


def _key(path: Path) -> SigningKey:
    if path.exists():
        return SigningKey.load(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = SigningKey.generate()
    key.save(path)
    return key


def _keys(workdir: Path) -> tuple[SigningKey, Path]:
    """The release key, and a trust store that lists it and the controller's command key."""
    key = _key(workdir / "keys" / "release" / "release.pem")
    command = _key(_command_key_path(workdir))
    trust_path = workdir / "keys" / "trust.json"
    store = TrustStore.from_keys([key.public_key()], command_keys=[command.public_key()])
    save_trust_store(store, trust_path)
    return key, trust_path


def _command_key_path(workdir: Path) -> Path:
    return workdir / "keys" / "command" / "command.pem"


def run_demo(duration: float, workdir: Path, http_port: int | None = None) -> DemoResult:
    """Run the whole loop for `duration` seconds and return what it measured.

    Raises DemoError, BrokerError, ModelFetchError.
    """
    workdir = workdir.resolve()
    agent_dir = workdir / "agent"
    shutil.rmtree(agent_dir, ignore_errors=True)  # a fresh device every run
    shutil.rmtree(workdir / "controller", ignore_errors=True)
    workdir.mkdir(parents=True, exist_ok=True)

    print("edgefleet demo: preparing keys, the BlazeFace bundle and a sample video", flush=True)
    key, trust_path = _keys(workdir)
    built = build_bundle(
        example_spec("blazeface-short"),
        workdir,
        [key],
        workdir / "blazeface-short.bundle",
        datetime.now(timezone.utc),
    )
    video = write_sample_video(workdir / "sample.avi", fps=10, seconds_per_image=2.0)

    link = _broker(workdir)
    broker = link.broker
    port = http_port if http_port is not None else free_port()
    settings = ControllerSettings(
        data_dir=workdir / "controller",
        mqtt=link.controller_mqtt,
        http=HttpSettings(port=port),
        trust_path=trust_path,
        command_key_path=_command_key_path(workdir),
        enrollment=link.enrollment,
    )
    controller = Controller(settings)
    agent: subprocess.Popen[bytes] | None = None
    api = f"http://127.0.0.1:{port}"
    try:
        controller.start()
        print(f"edgefleet demo: {link.description}, API at {api}", flush=True)
        agent_dir.mkdir(parents=True)
        shutil.copy(trust_path, agent_dir / "trust.json")
        config = {
            "device_id": DEVICE_ID,
            "data_dir": str(agent_dir),
            "mqtt": link.agent_mqtt(agent_dir),
            # the agent gets its identity the real way: key made on the device, a one-time
            # token, a certificate from the controller's CA, which the broker then requires
            "enrollment": {
                "url": api,
                "token": controller.enrollment.create_token(DEVICE_ID, timedelta(hours=1)).token,
            },
            "cameras": [{"id": "cam0", "source": str(video.path), "loop": True}],
            "health_interval_s": 2.0,
        }
        (workdir / "agent.log").unlink(missing_ok=True)
        agent = spawn_agent(write_agent_config(agent_dir, config), workdir / "agent.log")
        token = _demo_admin_token(controller)
        print(
            f"edgefleet demo: signed in as the demo's admin; try: EDGEFLEET_TOKEN={token} "
            f"edgefleet --api {api} devices",
            flush=True,
        )
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=api, timeout=10.0, headers=headers) as http:
            return _drive(http, agent, built.path, built.digest, duration, workdir)
    finally:
        if agent is not None:
            stop_agent(agent)
        controller.stop()
        broker.close()


@dataclass
class _BrokerLink:
    """The demo's broker and how the controller and the agent reach it."""

    broker: MosquittoBroker | InProcessBroker
    controller_mqtt: MqttSettings
    enrollment: EnrollmentSettings
    description: str
    device_port: int
    tls: bool

    def agent_mqtt(self, agent_dir: Path) -> dict[str, Any]:
        if not self.tls:
            return {"host": "127.0.0.1", "port": self.device_port}
        # the fleet CA arrives with the certificate at enrollment (agent.link.identity)
        ca = agent_dir / "identity" / "fleet-ca.pem"
        return {"host": "localhost", "port": self.device_port, "ca_file": str(ca)}


def _broker(workdir: Path) -> _BrokerLink:
    """mosquitto with the production TLS + ACL configuration on loopback; a plain local broker
    where mosquitto or its dynamic-security plugin is missing."""
    pki = workdir / "controller" / "pki"
    try:
        broker, end = start_secure_broker(pki, workdir / "broker", Topics().prefix)
    except BrokerError as exc:
        print(f"edgefleet demo: no TLS broker ({exc}); using a plain one on loopback", flush=True)
        plain = start_local_broker()
        return _BrokerLink(
            plain,
            MqttSettings(port=plain.port, client_id="edgefleet-demo-controller"),
            EnrollmentSettings(pki_dir=pki),
            f"plain broker on 127.0.0.1:{plain.port}",
            plain.port,
            tls=False,
        )
    mqtt = MqttSettings(
        host="localhost",
        port=end.controller_port,
        client_id="edgefleet-demo-controller",
        ca_file=end.fleet_ca,
        cert_file=end.controller_cert,
        key_file=end.controller_key,
    )
    enrollment = EnrollmentSettings(
        pki_dir=pki, broker_files_dir=end.files.directory, broker_pid_file=end.pid_file
    )
    description = (
        f"TLS broker on localhost:{end.device_port} (devices, client certificates and ACL) "
        f"and :{end.controller_port} (controller)"
    )
    return _BrokerLink(broker, mqtt, enrollment, description, end.device_port, tls=True)


def _demo_admin_token(controller: Controller) -> str:
    """The demo's own admin (a fresh database each run) and an API token that lasts a day."""
    with controller.sessions() as db:
        user = create_user(db, "demo-admin", secrets.token_urlsafe(24), Role.ADMIN)
        _row, token = issue_token(db, user, "demo", Role.ADMIN, 86400.0)
        db.commit()
    return token


def _device(http: httpx.Client) -> dict[str, Any] | None:
    devices = http.get("/api/devices").json()
    return next((d for d in devices if d["id"] == DEVICE_ID), None)


def _wait(what: str, check: Callable[[], object]) -> None:
    try:
        wait_until(what, check, timeout=60)
    except WaitTimedOut as exc:
        raise DemoError(str(exc)) from None


def _drive(
    http: httpx.Client,
    agent: subprocess.Popen[bytes],
    bundle_path: Path,
    digest: str,
    duration: float,
    workdir: Path,
) -> DemoResult:
    def agent_alive() -> None:
        if agent.poll() is not None:
            raise DemoError(f"the agent exited with {agent.returncode}; see {workdir}/agent.log")

    response = http.post("/api/bundles", content=bundle_path.read_bytes())
    if response.status_code >= 400:
        raise DemoError(f"bundle upload refused: {response.text}")

    def online() -> bool:
        agent_alive()
        device = _device(http)
        return bool(device and device["online"])

    _wait("the agent to come online", online)
    response = http.post("/api/deployments", json={"device": DEVICE_ID, "bundle": digest})
    if response.status_code >= 400:
        raise DemoError(f"deployment refused: {response.text}")

    def running() -> dict[str, Any] | None:
        agent_alive()
        device = _device(http)
        return device if device and device.get("active_digest") == digest else None

    _wait("the bundle to run on the agent", running)
    print("edgefleet demo: bundle running; Ctrl-C ends early", flush=True)
    deadline = time.monotonic() + duration
    summary: dict[str, Any] = {}
    interrupted = False
    try:
        while time.monotonic() < deadline:
            agent_alive()
            summary = http.get("/api/summary").json()
            last = summary.get("last_detection") or {}
            line = (
                f"\rdevices {summary['devices_online']}/{summary['devices']}  "
                f"fps {summary['fps']:5.1f}  frames {summary['frames']:6d}  "
                f"detections {summary['detections']:6d}  "
                f"last {last.get('label', '-')} {last.get('score', 0.0):.2f}  {http.base_url}"
            )
            print(line, end="", flush=True)
            time.sleep(1.0)
    except KeyboardInterrupt:
        interrupted = True
    print(flush=True)
    if not interrupted:
        summary = http.get("/api/summary").json()
    device = _device(http) or {}
    return DemoResult(
        devices=int(summary.get("devices", 0)),
        frames=int(summary.get("frames", 0)),
        detections=int(summary.get("detections", 0)),
        fps=float(summary.get("fps", 0.0)),
        bundle=f"{device.get('active_name', '?')}@{device.get('active_version', '?')}",
        runtime=str(device.get("active_runtime", "?")),
    )
