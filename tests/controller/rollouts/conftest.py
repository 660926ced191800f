"""A fleet over a real database: the real deployment service, reconciler and rollout engine,
with simulated agents that answer commands through the real ingest hooks (records and
deployment status), on a clock the test moves."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from controller.bundles.chunks import ChunkServer
from controller.bundles.repository import BundleRepository, release_verifier
from controller.db import Device, make_engine, session_factory, upgrade_database
from controller.fleet.deployments import DeploymentService
from controller.mqtt.commands import CommandSender
from controller.mqtt.records import Accepted, HealthSampler, WriteState, write_batch
from controller.rollouts.desired import Reconciler
from controller.rollouts.engine import RolloutEngine
from protocol.codec import decode_command
from protocol.events import DeviceStatus, EventKind
from protocol.messages import (
    Ack,
    ActiveBundle,
    CameraHealth,
    Command,
    Deploy,
    Event,
    Health,
    Rollback,
    State,
)
from protocol.topics import Channel, Topics

# the API and CLI tests' controller and answering agents
from tests.controller.rollouts.answering import controller, failing_fleet3, fleet3

__all__ = ["controller", "failing_fleet3", "fleet", "fleet3"]


class Recorder:
    """Stands in for the MQTT publisher: keeps every command that would have been sent."""

    def __init__(self) -> None:
        self.sent: list[Command] = []

    def publish(self, topic: str, payload: bytes, *, timeout: float = 30.0) -> None:
        self.sent.append(decode_command(payload))

    def take(self) -> list[Command]:
        out, self.sent = self.sent, []
        return out


class Clock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@dataclass
class SimDevice:
    id: str
    active: str | None
    online: bool = True
    # what it does with a deploy: "ok", "fail" (probation fails), "stall" (never answers)
    behaviour: str = "ok"
    fps: float = 30.0
    previous: str | None = None
    history: list[str] = field(default_factory=list)
    # declared in the agent's settings, sent in every state message
    tags: tuple[str, ...] = ()


class Fleet:
    def __init__(self, db_url: str, tmp_path, make_bundle, trust_file) -> None:
        self._make_bundle = make_bundle
        upgrade_database(db_url)
        self.engine_db = make_engine(db_url)
        self.sessions = session_factory(self.engine_db)
        self.clock = Clock(time.time())
        self.recorder = Recorder()
        self.commands = CommandSender(self.recorder, Topics())
        repo = BundleRepository(
            tmp_path / "bundles", self.sessions, release_verifier(trust_file, 1 << 24), 4096
        )
        self.repository = repo
        self.deployer = DeploymentService(
            self.sessions,
            repo,
            self.commands,
            ChunkServer(self.recorder, repo, Topics(), 0.05),  # type: ignore[arg-type]
            clock=self.clock,
        )
        self.reconciler = Reconciler(self.sessions, self.deployer)
        self.engine = self.new_engine()
        self.devices: dict[str, SimDevice] = {}
        self.bundles: dict[str, tuple[str, int]] = {}
        self.deploys: dict[str, list[str]] = {}
        # every health sample kept whole, so gate windows see each one
        self._write_state = WriteState(HealthSampler(0.0))

    def new_engine(self) -> RolloutEngine:
        """A fresh engine over the same database, as a restarted controller builds."""
        return RolloutEngine(self.sessions, self.reconciler, self.commands, clock=self.clock)

    def add_bundle(self, name: str, version: int) -> str:
        built = self._make_bundle(name=name, version=version, model_bytes=2000)
        info = self.repository.add_file(built.path)
        self.bundles[info.digest] = (name, version)
        return info.digest

    def add_devices(self, count: int, active: str | None, prefix: str = "cam", **kw) -> list[str]:
        ids = [f"{prefix}-{i:04d}" for i in range(count)]
        with self.sessions.begin() as session:
            for device in ids:
                session.add(Device(id=device, first_seen=self.clock.now, last_seen=self.clock.now))
        for device in ids:
            self.devices[device] = SimDevice(device, active, **kw)
            self._state(device)
        return ids

    def _store(self, *messages) -> None:
        # messages carry the test's clock, as agents' clocks agree with the controller's
        stamped = [
            m if m.type == "health" else m.model_copy(update={"ts": self.clock.now})
            for m in messages
        ]
        batch = [Accepted(m.device, _channel(m), m, self.clock.now) for m in stamped]
        with self.sessions.begin() as session:
            write_batch(session, batch, self.clock.now, self._write_state)
            self.deployer.in_transaction(session, batch)

    def _state(self, device: str) -> None:
        sim = self.devices[device]
        active = None
        if sim.active is not None:
            name, version = self.bundles[sim.active]
            active = ActiveBundle(name=name, version=version, digest=sim.active, runtime="litert")
        status = DeviceStatus.ONLINE if sim.online else DeviceStatus.OFFLINE
        self._store(
            State(device=device, status=status, active=active, tags=sim.tags, ts=self.clock.now)
        )

    def declare_tags(self, device: str, *tags: str) -> None:
        self.devices[device].tags = tags
        self._state(device)

    def set_online(self, device: str, online: bool) -> None:
        self.devices[device].online = online
        self._state(device)

    def health(self, device: str, fps: float | None = None, ts: float | None = None) -> None:
        sim = self.devices[device]
        camera = CameraHealth(camera="cam0", fps_processed=sim.fps if fps is None else fps)
        self._store(
            Health(device=device, cameras=(camera,), ts=self.clock.now if ts is None else ts)
        )

    def agents_answer(self) -> None:
        """Every online simulated device handles the commands sent to it, start to end."""
        pending = self.recorder.take()
        for command in pending:
            sim = self.devices[command.device]
            if not sim.online:
                continue  # an offline device never sees the command
            if isinstance(command, Deploy):
                self.deploys.setdefault(sim.id, []).append(command.bundle.digest)
                self._deploy(sim, command)
            elif isinstance(command, Rollback):
                ok = sim.previous is not None
                self._store(Ack(device=sim.id, cmd_id=command.id, ok=ok))
                if ok:
                    rolled = sim.active
                    sim.active, sim.previous = sim.previous, None
                    self._store(
                        Event(
                            device=sim.id,
                            kind=EventKind.ROLLED_BACK,
                            bundle=rolled,
                            cmd_id=command.id,
                        )
                    )
                    self._state(sim.id)

    def _deploy(self, sim: SimDevice, command: Deploy) -> None:
        digest = command.bundle.digest
        self._store(Ack(device=sim.id, cmd_id=command.id, ok=True))
        if sim.behaviour == "stall":
            return
        for kind in (EventKind.DOWNLOADING, EventKind.VERIFIED, EventKind.INSTALLING):
            self._store(Event(device=sim.id, kind=kind, bundle=digest, cmd_id=command.id))
        if sim.behaviour == "fail":
            self._store(
                Event(
                    device=sim.id,
                    kind=EventKind.FAILED,
                    bundle=digest,
                    cmd_id=command.id,
                    reason="load_failed",
                )
            )
            return
        sim.previous, sim.active = sim.active, digest
        self._store(
            Event(device=sim.id, kind=EventKind.PROBATION, bundle=digest, cmd_id=command.id)
        )
        self._state(sim.id)
        self._store(Event(device=sim.id, kind=EventKind.RUNNING, bundle=digest, cmd_id=command.id))

    def run(self, seconds: float, step: float = 1.0, engine: RolloutEngine | None = None) -> None:
        """Tick every `step` seconds for `seconds`, agents answering between ticks."""
        engine = engine or self.engine
        end = self.clock.now + seconds
        while self.clock.now < end:
            engine.tick(self.clock.now)
            self.agents_answer()
            self.clock.now += step

    def close(self) -> None:
        self.engine_db.dispose()


def _channel(message) -> Channel:
    return {
        "state": Channel.STATE,
        "health": Channel.HEALTH,
        "evt": Channel.EVT,
        "ack": Channel.ACK,
    }[message.type]


@pytest.fixture
def fleet(db_url, tmp_path, make_bundle, trust_file) -> Iterator[Fleet]:
    fleet = Fleet(db_url, tmp_path, make_bundle, trust_file)
    try:
        yield fleet
    finally:
        fleet.close()
