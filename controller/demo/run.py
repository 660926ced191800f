"""The demo run: controller + local broker + one local agent on a sample video, one command,
plus a simulated fleet taking a new bundle version in a rollout.

Everything real: a mosquitto (or in-process broker), the controller with SQLite, an agent
process, a BlazeFace bundle built and signed here and delivered over MQTT. Beside the agent,
simulated devices (`controller.demo.fleet`, default 50) enroll, connect to the same broker and
are rolled to version 2 of the bundle in waves while the demo runs. The command line
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

from controller.auth.tokens import issue_login_link, issue_token
from controller.auth.users import Role, create_user
from controller.demo.broker import (
    BrokerError,
    InProcessBroker,
    MosquittoBroker,
    free_port,
    start_local_broker,
    start_secure_broker,
)
from controller.demo.fleet import SimBroker, start_rollout, start_sim_fleet
from controller.demo.processes import spawn_agent, stop_agent, write_agent_config
from controller.demo.sample_video import write_sample_video
from controller.demo.sim.fleet import SimFleet
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
from ota.trust_file import load_trust_store, save_trust_store
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
    simulated: int = 0
    rollout: str = "-"

    def line(self) -> str:
        return (
            f"RESULT devices={self.devices} frames={self.frames} detections={self.detections} "
            f"fps={self.fps:.1f} bundle={self.bundle} runtime={self.runtime} "
            f"simulated={self.simulated} rollout={self.rollout}"
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


def run_demo(
    duration: float, workdir: Path, http_port: int | None = None, simulated: int = 50
) -> DemoResult:
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
    # what the simulated fleet is rolled to: the same model, version 2
    next_version = build_bundle(
        example_spec("blazeface-short", version=2),
        workdir,
        [key],
        workdir / "blazeface-short-2.bundle",
        datetime.now(timezone.utc),
    )

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
    fleet: SimFleet | None = None
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
        token, login = _demo_admin(controller)
        print(
            f"edgefleet demo: dashboard at {api}/ ; sign in once with "
            f"{api}/api/auth/link?token={login}",
            flush=True,
        )
        print(
            f"edgefleet demo: the CLI as the demo's admin: EDGEFLEET_TOKEN={token} "
            f"edgefleet --api {api} devices",
            flush=True,
        )
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=api, timeout=10.0, headers=headers) as http:
            _bring_up(http, agent, built.path, built.digest, workdir)
            rollout_id: str | None = None
            if simulated > 0:
                print(
                    f"edgefleet demo: starting {simulated} simulated devices on "
                    f"{built.digest[:12]}",
                    flush=True,
                )
                fleet = start_sim_fleet(
                    simulated,
                    link.sim_broker,
                    controller.enrollment,
                    load_trust_store(trust_path),
                    built.path,
                    workdir / "sim",
                )
                controller.bundles.add_file(next_version.path)
                rollout_id = start_rollout(
                    controller.rollouts, next_version.digest, simulated, duration
                )
                print(
                    f"edgefleet demo: rollout {rollout_id} takes the simulated devices to "
                    "blazeface-short@2 in waves (1, 20 %, 100 %)",
                    flush=True,
                )
            result = _watch(http, agent, duration, workdir, rollout_id)
            result.simulated = simulated
            return result
    finally:
        if fleet is not None:
            fleet.stop()
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
    fleet_ca: Path | None = None

    @property
    def sim_broker(self) -> SimBroker:
        host = "localhost" if self.tls else "127.0.0.1"
        return SimBroker(host, self.device_port, self.fleet_ca if self.tls else None)

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
    return _BrokerLink(
        broker, mqtt, enrollment, description, end.device_port, tls=True, fleet_ca=end.fleet_ca
    )


def _demo_admin(controller: Controller) -> tuple[str, str]:
    """The demo's own admin (a fresh database each run): an API token that lasts a day, and
    a one-time login link's secret for the dashboard."""
    with controller.sessions() as db:
        user = create_user(db, "demo-admin", secrets.token_urlsafe(24), Role.ADMIN)
        _row, token = issue_token(db, user, "demo", Role.ADMIN, 86400.0)
        link = issue_login_link(db, user, ttl_s=3600.0)
        db.commit()
    return token, link


def _device(http: httpx.Client) -> dict[str, Any] | None:
    devices = http.get("/api/devices").json()
    return next((d for d in devices if d["id"] == DEVICE_ID), None)


def _wait(what: str, check: Callable[[], object]) -> None:
    try:
        wait_until(what, check, timeout=60)
    except WaitTimedOut as exc:
        raise DemoError(str(exc)) from None


def _bring_up(
    http: httpx.Client,
    agent: subprocess.Popen[bytes],
    bundle_path: Path,
    digest: str,
    workdir: Path,
) -> None:
    """Upload the bundle, wait for the agent, deploy, and wait until it runs the bundle."""

    def agent_alive() -> None:
        _check_agent(agent, workdir)

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


def _check_agent(agent: subprocess.Popen[bytes], workdir: Path) -> None:
    if agent.poll() is not None:
        raise DemoError(f"the agent exited with {agent.returncode}; see {workdir}/agent.log")


def _rollout_text(http: httpx.Client, rollout_id: str | None) -> tuple[str, str]:
    """(the rollout's state, a short progress text) for the status line."""
    if rollout_id is None:
        return "-", ""
    response = http.get(f"/api/rollouts/{rollout_id}")
    if response.status_code >= 400:
        return "unknown", "  rollout ?"
    view = response.json()
    waves = view.get("waves", [])
    done = sum(w.get("counts", {}).get("succeeded", 0) for w in waves)
    total = sum(w.get("total", 0) for w in waves)
    return view["state"], (
        f"  rollout {view['state']} wave {view['wave'] + 1}/{len(waves)} {done}/{total}"
    )


def _watch(
    http: httpx.Client,
    agent: subprocess.Popen[bytes],
    duration: float,
    workdir: Path,
    rollout_id: str | None,
) -> DemoResult:
    """Show the fleet for `duration` seconds; returns what it measured."""
    deadline = time.monotonic() + duration
    summary: dict[str, Any] = {}
    state = "-"
    interrupted = False
    try:
        while time.monotonic() < deadline:
            _check_agent(agent, workdir)
            summary = http.get("/api/summary", params={"device": DEVICE_ID}).json()
            state, progress = _rollout_text(http, rollout_id)
            last = summary.get("last_detection") or {}
            line = (
                f"\rdevices {summary['devices_online']}/{summary['devices']}  "
                f"fps {summary['fps']:5.1f}  frames {summary['frames']:6d}  "
                f"detections {summary['detections']:6d}  "
                f"last {last.get('label', '-')} {last.get('score', 0.0):.2f}{progress}"
            )
            print(line, end="", flush=True)
            time.sleep(1.0)
    except KeyboardInterrupt:
        interrupted = True
    print(flush=True)
    if not interrupted:
        summary = http.get("/api/summary", params={"device": DEVICE_ID}).json()
        state, _ = _rollout_text(http, rollout_id)
    device = _device(http) or {}
    return DemoResult(
        devices=int(summary.get("devices", 0)),
        frames=int(summary.get("frames", 0)),
        detections=int(summary.get("detections", 0)),
        fps=float(summary.get("fps", 0.0)),
        bundle=f"{device.get('active_name', '?')}@{device.get('active_version', '?')}",
        runtime=str(device.get("active_runtime", "?")),
        rollout=state,
    )
