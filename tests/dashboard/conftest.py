"""Fixtures of the dashboard tests: one started controller per module (SQLite, its own broker),
operators of every role, and a fleet whose device-controlled strings try to break out of the
page."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from controller.auth.users import Role, create_user
from controller.db import (
    DetectionRow,
    Device,
    DeviceHealth,
    EventRow,
    HealthRow,
)
from controller.demo.broker import MosquittoBroker
from controller.rollouts.models import DeviceInventory
from controller.rollouts.spec import RolloutSpec, Selector
from controller.server import Controller
from controller.settings import ControllerSettings, HttpSettings, IngestSettings, MqttSettings
from ota.build import BundleSpec, VariantSource, build_bundle
from ota.keys import SigningKey
from ota.manifest import InputSpec, PostprocessSpec
from ota.trust import TrustStore
from ota.trust_file import save_trust_store
from tests.controller.operators import TEST_PASSWORD

SCRIPT = "<script>alert(1)</script>"
ATTRIBUTE = '" onmouseover=alert(1) x="'
# a device id made of the hostile strings, but for the "/" a topic level cannot hold
EVIL_DEVICE = f"evil<script>alert(1){ATTRIBUTE}"
PLAIN_DEVICES = [f"cam-{i:02d}" for i in range(12)]


@dataclass(frozen=True)
class Fleet:
    controller: Controller
    base_url: str
    sessions: sessionmaker[Session]
    users: dict[str, str]  # role -> user name (password: TEST_PASSWORD)
    rollout_id: str
    bundle_digest: str
    upload: Path  # a signed bundle the controller does not have yet
    password: str = TEST_PASSWORD


def add_detection(sessions: sessionmaker[Session], device: str, label: str, **fields) -> str:
    """One detection row as the ingest stores it; returns its id."""
    now = time.time()
    row_id = uuid.uuid4().hex
    values = {
        "id": row_id,
        "device": device,
        "camera": "front",
        "track_id": 7,
        "event": "start",
        "label": label,
        "score": 0.91,
        "x1": 0.1,
        "y1": 0.2,
        "x2": 0.4,
        "y2": 0.6,
        "ts": now,
        "model": "face@1",
        "runtime": "litert",
        "snapshot": None,
        "received": now,
    } | fields
    with sessions() as db:
        db.add(DetectionRow(**values))
        db.commit()
    return row_id


def _seed(sessions: sessionmaker[Session]) -> None:
    now = time.time()
    with sessions() as db:
        for i, name in enumerate(PLAIN_DEVICES):
            db.add(
                Device(
                    id=name,
                    online=i % 4 != 0,
                    status="online" if i % 4 != 0 else "offline",
                    profile="rpi5" if i % 2 else "jetson-orin",
                    agent_version="1.2.0",
                    runtimes=[{"key": "litert", "available": True, "reason": "cpu"}],
                    cameras=["front"],
                    active_name="face",
                    active_version=1,
                    active_digest=None,
                    active_runtime="litert",
                    active_reason="fastest measured",
                    first_seen=now - 86400,
                    last_seen=now - (i + 1) * 60,
                )
            )
        db.add(
            Device(
                id=EVIL_DEVICE,
                online=True,
                status="online",
                profile=f"profile{SCRIPT}",
                agent_version=ATTRIBUTE,
                runtimes=[{"key": f"rt{SCRIPT}", "available": False, "reason": ATTRIBUTE}],
                cameras=[f"cam{SCRIPT}", ATTRIBUTE],
                active_name=None,
                active_version=None,
                active_digest=None,
                active_runtime=None,
                active_reason=SCRIPT,
                first_seen=now - 3600,
                last_seen=now,
            )
        )
        db.flush()
        db.add(DeviceInventory(device="cam-01", tags=["lobby", "floor_2"], decommissioned=None))
        hot = {
            "temperatures_c": {"soc": 91.0, f"t{SCRIPT}": 40.0},
            "throttling": {"under_voltage_now": True, "throttled_now": True},
            "outbox_dropped": 3,
            "cameras": [{"camera": "front", "fps_processed": 9.5, "inference_ms": 31.0}],
            "cpu_percent": 55.0,
            "mem_used_mb": 900.0,
            "mem_total_mb": 4000.0,
        }
        db.add(
            DeviceHealth(
                device=EVIL_DEVICE, msg_id=uuid.uuid4().hex, ts=now - 120, payload=hot, received=now
            )
        )
        for k in range(30):
            ts = now - 3600 + k * 120
            payload = {
                "cameras": [{"camera": "front", "fps_processed": 8 + k % 5, "inference_ms": 30}],
                "cpu_percent": 40.0 + k,
                "temperatures_c": {"soc": 60.0 + k / 2},
                "mem_used_mb": 1000.0 + 10 * k,
                "mem_total_mb": 4000.0,
            }
            db.add(
                HealthRow(
                    msg_id=uuid.uuid4().hex, device=EVIL_DEVICE, ts=ts, payload=payload, received=ts
                )
            )
        db.add(
            EventRow(
                id=uuid.uuid4().hex,
                device=EVIL_DEVICE,
                kind="failed",
                level="error",
                bundle=None,
                cmd_id=None,
                reason=f"reason{SCRIPT}",
                message=f"message{ATTRIBUTE}{SCRIPT}",
                ts=now - 30,
                received=now - 30,
            )
        )
        db.commit()
    add_detection(sessions, EVIL_DEVICE, f"label{SCRIPT}", camera=f"cam{ATTRIBUTE}")


def _bundle(workdir: Path, key: SigningKey, version: int) -> Path:
    src = workdir / f"bundle-src-{version}"
    src.mkdir()
    (src / "model.tflite").write_bytes(os.urandom(20_000))
    spec = BundleSpec(
        name="face",
        version=version,
        labels=("face",),
        input=InputSpec(width=128, height=128),
        postprocess=PostprocessSpec(kind="blazeface"),
        variants=(VariantSource(runtime="litert", model="model.tflite"),),
    )
    out = workdir / f"face-{version}.bundle"
    return build_bundle(spec, src, [key], out, datetime.now(timezone.utc)).path


@contextmanager
def started_fleet(workdir: Path, command_key: SigningKey, database_url: str) -> Iterator[Fleet]:
    """A started controller with a seeded fleet, a bundle, a rollout waiting to start, one
    user of each role, and another signed bundle on disk to upload."""
    release_key = SigningKey.generate()
    trust_path = workdir / "trust.json"
    save_trust_store(TrustStore.from_keys([release_key.public_key()]), trust_path)
    key_path = workdir / "command-key" / "command.pem"
    key_path.parent.mkdir()
    command_key.save(key_path)
    broker = MosquittoBroker(workdir=workdir / "broker")
    broker.start()
    try:
        settings = ControllerSettings(
            data_dir=workdir / "controller",
            database_url=database_url,
            mqtt=MqttSettings(port=broker.port, client_id=f"ctl-{uuid.uuid4().hex[:8]}"),
            http=HttpSettings(port=0),
            ingest=IngestSettings(max_delay_s=0.05),
            trust_path=trust_path,
            command_key_path=key_path,
        )
        ctl = Controller(settings).start()
        try:
            _seed(ctl.sessions)
            info = ctl.bundles.add_file(_bundle(workdir, release_key, 2))
            rollout_id = ctl.rollouts.create(
                "canary <b>face</b>",
                f"{info.name}@{info.version}",
                Selector(devices=PLAIN_DEVICES[:6]),
                RolloutSpec(),
                start_at=time.time() + 3600,
            )
            users = {}
            with ctl.sessions() as db:
                for role in Role:
                    name = f"{role.value}-{uuid.uuid4().hex[:6]}"
                    create_user(db, name, TEST_PASSWORD, role)
                    users[role.value] = name
                db.commit()
            yield Fleet(
                ctl,
                ctl.api_url,
                ctl.sessions,
                users,
                rollout_id,
                info.digest,
                _bundle(workdir, release_key, 3),
            )
        finally:
            ctl.stop()
    finally:
        broker.close()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, command_key) -> Iterator[Fleet]:
    """The seeded fleet's controller on SQLite."""
    workdir = tmp_path_factory.mktemp("dashboard")
    with started_fleet(workdir, command_key, f"sqlite:///{workdir / 'controller.db'}") as started:
        yield started
