"""Fake agents that answer rollouts over a real broker, and a controller whose scheduler
ticks quickly, for the rollout API and CLI tests."""

from __future__ import annotations

import queue
import threading

import pytest
from sqlalchemy import select

from controller.db import Device
from controller.demo.waiting import wait_until
from controller.server import Controller
from controller.settings import RolloutSettings
from protocol.events import EventKind
from protocol.messages import Ack, ActiveBundle, Deploy, Event, Rollback
from tests.controller.fake_agents import FakeAgent

FAST_ROLLOUTS = RolloutSettings(tick_s=0.2, leader_retry_s=0.2, revert_retry_s=2.0)


class AnsweringAgent:
    """A fake agent that runs every deploy through to `running` (or fails its probation)."""

    def __init__(self, agent: FakeAgent, active: ActiveBundle, fail: bool = False) -> None:
        self.agent = agent
        self.active = active
        self.previous: ActiveBundle | None = None
        self.fail = fail
        self.received: list = []
        self._stop = threading.Event()
        agent.subscribe(agent.topics.cmd(agent.device))
        agent.online(active=active)
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                command = self.agent.next_command(timeout=0.1)
            except queue.Empty:
                continue
            self.received.append(command)
            self._answer(command)

    def _evt(self, kind: EventKind, digest: str | None, cmd_id: str, **kw) -> None:
        self.agent.send(
            Event(device=self.agent.device, kind=kind, bundle=digest, cmd_id=cmd_id, **kw), "evt"
        )

    def _answer(self, command) -> None:
        device = self.agent.device
        ok = not isinstance(command, Rollback) or self.previous is not None
        self.agent.send(Ack(device=device, cmd_id=command.id, ok=ok), "ack")
        if isinstance(command, Deploy):
            digest = command.bundle.digest
            for kind in (EventKind.DOWNLOADING, EventKind.VERIFIED, EventKind.INSTALLING):
                self._evt(kind, digest, command.id)
            if self.fail:
                self._evt(EventKind.FAILED, digest, command.id, reason="load_failed")
                return
            new = ActiveBundle(
                name=command.bundle.name,
                version=command.bundle.version,
                digest=digest,
                runtime="litert",
            )
            self.previous, self.active = self.active, new
            self._evt(EventKind.PROBATION, digest, command.id)
            self.agent.online(active=new)
            self._evt(EventKind.RUNNING, digest, command.id)
        elif isinstance(command, Rollback) and self.previous is not None:
            rolled = self.active.digest
            self.active, self.previous = self.previous, None
            self.agent.online(active=self.active)
            self._evt(EventKind.ROLLED_BACK, rolled, command.id)

    def deploys(self) -> list[Deploy]:
        return [c for c in self.received if isinstance(c, Deploy)]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.agent.close()


@pytest.fixture
def controller(controller_settings):
    """A controller whose scheduler ticks rollouts quickly."""
    ctl = Controller(controller_settings(rollouts=FAST_ROLLOUTS)).start()
    try:
        # inside the try: a controller that fails this check is still stopped (its scheduler
        # would otherwise keep the database's leader lock for the rest of the run)
        assert ctl.ingest.wait_ready(15) and ctl.publisher.wait_ready(15)
        yield ctl
    finally:
        ctl.stop()


@pytest.fixture
def fleet3(controller, mosquitto, make_bundle):
    """Three answering agents on face@1; face@2 uploaded."""
    yield from _fleet(controller, mosquitto, make_bundle, failing=False)


@pytest.fixture
def failing_fleet3(controller, mosquitto, make_bundle):
    """The same, but every probation of a new bundle fails (face@2 is a bad bundle)."""
    yield from _fleet(controller, mosquitto, make_bundle, failing=True)


def _fleet(controller, mosquitto, make_bundle, failing: bool):
    infos = {}
    for version in (1, 2):
        built = make_bundle(name="face", version=version, model_bytes=2000)
        infos[version] = controller.bundles.add_file(built.path)
    old = ActiveBundle(name="face", version=1, digest=infos[1].digest, runtime="litert")
    agents = []
    for i in range(3):
        fake = FakeAgent(mosquitto.host, mosquitto.port, f"cam-{i}")
        agents.append(AnsweringAgent(fake, old, fail=failing))
    wait_until(
        "devices known",
        lambda: sum(1 for d in _devices(controller) if d.active_digest == infos[1].digest) == 3,
    )
    try:
        yield agents, infos
    finally:
        for agent in agents:
            agent.close()


def _devices(controller):
    with controller.sessions() as session:
        return list(session.scalars(select(Device)))
