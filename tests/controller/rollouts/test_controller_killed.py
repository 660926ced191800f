"""A controller process SIGKILLed in the middle of a wave: a new one over the same database
and broker resumes the rollout where it was; no device is offered twice, none is forgotten."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from controller.bundles.repository import BundleRepository, release_verifier
from controller.db import make_engine, session_factory, upgrade_database
from controller.demo.broker import free_port
from controller.demo.waiting import wait_until
from controller.settings import HttpSettings, RolloutSettings
from protocol.messages import ActiveBundle
from tests.controller import operators
from tests.controller.fake_agents import FakeAgent
from tests.controller.rollouts.answering import AnsweringAgent

ROOT = Path(__file__).resolve().parents[3]
SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def start_controller(config: Path, log: Path) -> subprocess.Popen:
    out = log.open("ab")
    try:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "controller.cli.main",
                "controller",
                "run",
                "--config",
                str(config),
            ],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    finally:
        out.close()


def answering(http: httpx.Client) -> bool:
    try:
        return http.get("/api/rollouts").status_code == 200
    except httpx.TransportError:
        return False


@SQLITE_ONLY
def test_a_controller_killed_mid_wave_is_resumed_by_the_next_one(
    tmp_path, mosquitto, controller_settings, make_bundle
):
    port = free_port()
    settings = controller_settings(
        http=HttpSettings(port=port),
        rollouts=RolloutSettings(tick_s=0.2, leader_retry_s=0.2),
    )
    config = tmp_path / "controller.json"
    config.write_text(json.dumps(settings.model_dump(mode="json", exclude_none=True)))
    url = settings.resolved_database_url()
    upgrade_database(url)
    engine = make_engine(url)
    sessions = session_factory(engine)
    repo = BundleRepository(
        settings.bundle_dir,
        sessions,
        release_verifier(settings.resolved_trust_path(), 1 << 24),
        4096,
    )
    infos = {
        v: repo.add_file(make_bundle(name="face", version=v, model_bytes=2000).path) for v in (1, 2)
    }
    old = ActiveBundle(name="face", version=1, digest=infos[1].digest, runtime="litert")
    agents = [
        AnsweringAgent(FakeAgent(mosquitto.host, mosquitto.port, f"cam-{i}"), old) for i in range(6)
    ]
    log = tmp_path / "controller.log"
    http = operators.api_client(f"http://127.0.0.1:{port}", sessions)
    first = start_controller(config, log)
    second = None
    try:
        wait_until("first controller", lambda: answering(http), timeout=30)
        wait_until("devices", lambda: len(http.get("/api/devices").json()) == 6)
        body = {
            "name": "kill",
            "bundle": "face@2",
            "spec": {"waves": ["100%"], "rate_per_min": 20},
        }
        created = http.post("/api/rollouts", json=body)
        assert created.status_code == 201, created.text
        rid = created.json()["id"]
        wait_until("two offered", lambda: sum(len(a.deploys()) for a in agents) >= 2, timeout=30)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        offered_before = sum(len(a.deploys()) for a in agents)
        assert offered_before < 6
        second = start_controller(config, log)
        wait_until("second controller", lambda: answering(http), timeout=30)
        wait_until(
            "completed",
            lambda: http.get(f"/api/rollouts/{rid}").json()["state"] == "completed",
            timeout=60,
        )
        assert [len(a.deploys()) for a in agents] == [1] * 6, log.read_text()[-3000:]
        assert all(a.active.digest == infos[2].digest for a in agents)
        members = http.get(f"/api/rollouts/{rid}/devices").json()
        assert sorted(m["state"] for m in members) == ["succeeded"] * 6
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(20)
        http.close()
        for agent in agents:
            agent.close()
        engine.dispose()
