"""Deployments end to end: fake agents (real paho clients) against a started controller."""

from __future__ import annotations

import hashlib
import queue
import uuid

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from controller.bundles.repository import UnknownBundle
from controller.db import Device
from controller.demo.waiting import wait_until
from controller.fleet.deployments import UnknownDevice
from controller.mqtt.records import Accepted
from controller.mqtt.session import Publisher
from controller.server import Controller
from controller.settings import MqttSettings
from protocol.events import CommandRefusal, EventKind
from protocol.messages import Ack, Deploy, Event
from protocol.topics import Channel
from tests.controller.fake_agents import FakeAgent


@pytest.fixture
def agents(mosquitto):
    made: list[FakeAgent] = []

    def make(device: str) -> FakeAgent:
        agent = FakeAgent(mosquitto.host, mosquitto.port, device)
        made.append(agent)
        return agent

    yield make
    for agent in made:
        agent.close()


def enrolled(ctl: Controller, agent: FakeAgent) -> FakeAgent:
    agent.subscribe(agent.topics.cmd(agent.device))
    agent.online(profile="rpi4")
    wait_until("device known", lambda: known(ctl, agent.device))
    return agent


def known(ctl: Controller, device: str) -> bool:
    with ctl.sessions() as s:
        return s.get(Device, device) is not None


def status_of(ctl: Controller, cmd_id: str) -> str:
    found = ctl.deployer.get_by_cmd(cmd_id)
    assert found is not None
    return found.status


def reassemble(chunks, total: int) -> bytes:
    by_index = {c.index: c.data for c in chunks}
    assert sorted(by_index) == list(range(total))
    return b"".join(by_index[i] for i in range(total))


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_agent_receives_the_bundle_then_only_the_chunks_it_asks_for(
    controller, agents, make_bundle
):
    agent = enrolled(controller, agents("cam-a"))
    built = make_bundle(model_bytes=60_000)
    bundle = controller.bundles.add_file(built.path)
    assert bundle.digest == built.digest

    deployment = controller.deployer.deploy("cam-a", bundle.digest)
    command = agent.next_command()
    assert isinstance(command, Deploy) and command.id == deployment.cmd_id
    offer = command.bundle
    assert (offer.digest, offer.size, offer.chunk_size) == (built.digest, built.size, 4096)
    assert offer.chunks == -(-built.size // 4096) and offer.chunks > 10
    assert status_of(controller, command.id) == "sent"

    agent.subscribe(agent.topics.bundle_chunks(offer.digest))
    agent.request_chunks(offer.digest, (0, offer.chunks - 1))
    data = reassemble(agent.take_chunks(offer.chunks), offer.chunks)
    assert hashlib.sha256(data).hexdigest() == offer.digest
    assert data == built.path.read_bytes()

    agent.request_chunks(offer.digest, (2, 3), (7, 7))
    subset = [c.index for c in agent.take_chunks(3)]
    agent.request_chunks(offer.digest, (0, 0))  # a fence: anything extra would come before it
    fence = agent.take_chunks(1)
    assert [*subset, fence[0].index] == [2, 3, 7, 0]

    assert 1 <= controller.publisher.peak_inflight <= 3
    assert controller.chunks.chunks_sent == offer.chunks + 4
    assert status_of(controller, command.id) == "downloading"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_requests_from_several_agents_close_together_are_served_by_one_pass(
    controller_settings, agents, make_bundle
):
    with Controller(controller_settings(chunk_coalesce_s=0.3)) as ctl:
        assert ctl.ingest.wait_ready(5)
        fleet = [enrolled(ctl, agents(f"cam-{i}")) for i in range(3)]
        bundle = ctl.bundles.add_file(make_bundle().path)
        for agent in fleet:
            ctl.deployer.deploy(agent.device, bundle.digest)
            agent.next_command()
            agent.subscribe(agent.topics.bundle_chunks(bundle.digest))
        for agent in fleet:
            agent.request_chunks(bundle.digest, (0, bundle.chunks - 1))
        for agent in fleet:
            data = reassemble(agent.take_chunks(bundle.chunks), bundle.chunks)
            assert hashlib.sha256(data).hexdigest() == bundle.digest
        assert ctl.chunks.chunks_sent == bundle.chunks
        assert ctl.chunks.passes == 1


def test_deployment_status_follows_acks_and_events(controller, agents, make_bundle):
    agent = enrolled(controller, agents("cam-a"))
    bundle = controller.bundles.add_file(make_bundle().path)
    cmd = controller.deployer.deploy("cam-a", bundle.digest).cmd_id
    agent.next_command()

    agent.send(Ack(device="cam-a", cmd_id=cmd, ok=True), "ack")
    wait_until("accepted", lambda: status_of(controller, cmd) == "accepted")
    for kind in (EventKind.VERIFIED, EventKind.INSTALLING, EventKind.RUNNING):
        agent.send(Event(device="cam-a", kind=kind, bundle=bundle.digest, cmd_id=cmd), "evt")
    wait_until("running", lambda: status_of(controller, cmd) == "running")
    # a late or redelivered progress event never moves a deployment back
    agent.send(Event(device="cam-a", kind=EventKind.DOWNLOADING, bundle=bundle.digest), "evt")
    agent.send(
        Event(
            device="cam-a",
            kind=EventKind.ROLLED_BACK,
            bundle=bundle.digest,
            reason="probation_failed",
        ),
        "evt",
    )
    wait_until("rolled back", lambda: status_of(controller, cmd) == "rolled_back")
    assert controller.deployer.get_by_cmd(cmd).reason == "probation_failed"

    second = controller.deployer.deploy("cam-a", bundle.digest).cmd_id
    agent.send(Ack(device="cam-a", cmd_id=second, ok=False, detail="disk full"), "ack")
    wait_until("refused by agent", lambda: status_of(controller, second) == "failed")
    assert controller.deployer.get_by_cmd(second).reason == "disk full"
    listed = controller.deployer.list(device="cam-a")
    assert [d.cmd_id for d in listed] == [second, cmd]


def test_one_batch_moves_each_deployment_its_messages_name(controller, agents, make_bundle):
    """The ingest hands the deployer whole batches: every message in one moves the deployment
    it names (its command's, else the device's newest for that bundle), and nothing else."""
    for device in ("cam-a", "cam-b"):
        enrolled(controller, agents(device))
    bundle = controller.bundles.add_file(make_bundle().path)
    older = controller.deployer.deploy("cam-a", bundle.digest).cmd_id
    newer = controller.deployer.deploy("cam-a", bundle.digest).cmd_id
    other = controller.deployer.deploy("cam-b", bundle.digest).cmd_id
    digest = bundle.digest
    messages: list[tuple[Channel, Event | Ack]] = [
        (Channel.EVT, Event(device="cam-a", kind=EventKind.VERIFIED, bundle=digest, cmd_id=older)),
        (Channel.EVT, Event(device="cam-a", kind=EventKind.DOWNLOADING, bundle=digest)),
        (Channel.ACK, Ack(device="cam-b", cmd_id=other, ok=True)),
        (Channel.EVT, Event(device="cam-b", kind=EventKind.INSTALLING, bundle=digest)),
        (Channel.ACK, Ack(device="cam-b", cmd_id="no-such-command", ok=True)),
        (Channel.EVT, Event(device="cam-c", kind=EventKind.RUNNING, bundle=digest)),
        (Channel.EVT, Event(device="cam-a", kind=EventKind.RUNNING, bundle="ab" * 32)),
    ]
    batch = [Accepted(m.device, channel, m, 0.0) for channel, m in messages]
    with controller.sessions() as session, session.begin():
        controller.deployer.in_transaction(session, batch)
    assert status_of(controller, older) == "verified"
    assert status_of(controller, newer) == "downloading"
    assert status_of(controller, other) == "installing"


def test_a_replayed_answer_to_a_redelivered_deploy_changes_nothing(controller, agents, make_bundle):
    agent = enrolled(controller, agents("cam-a"))
    bundle = controller.bundles.add_file(make_bundle().path)
    cmd = controller.deployer.deploy("cam-a", bundle.digest).cmd_id
    agent.next_command()
    agent.send(Ack(device="cam-a", cmd_id=cmd, ok=True, result="accepted"), "ack")
    wait_until("accepted", lambda: status_of(controller, cmd) == "accepted")
    # the broker delivered the deploy again; the device's replay guard refuses the copy
    replayed = CommandRefusal.REPLAYED.value
    agent.send(Ack(device="cam-a", cmd_id=cmd, ok=False, result=replayed), "ack")
    agent.send(
        Event(device="cam-a", kind=EventKind.RUNNING, bundle=bundle.digest, cmd_id=cmd), "evt"
    )
    wait_until("running", lambda: status_of(controller, cmd) == "running")
    assert controller.deployer.get_by_cmd(cmd).reason == ""


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_chunks_go_only_to_devices_the_bundle_was_deployed_to(controller, agents, make_bundle):
    agent = enrolled(controller, agents("cam-a"))
    bundle = controller.bundles.add_file(make_bundle().path)
    agent.subscribe(agent.topics.bundle_chunks(bundle.digest))
    agent.request_chunks(bundle.digest, (0, bundle.chunks - 1))  # never deployed to cam-a
    wait_until("request refused", lambda: controller.deployer.chunk_requests_refused == 1)

    controller.deployer.deploy("cam-a", bundle.digest)
    agent.next_command()
    agent.request_chunks(bundle.digest, (1, 1))
    assert [c.index for c in agent.take_chunks(1)] == [1]
    assert controller.chunks.chunks_sent == 1


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_deploy_refuses_unknown_devices_and_bundles(controller, agents, make_bundle):
    enrolled(controller, agents("cam-a"))
    bundle = controller.bundles.add_file(make_bundle().path)
    with pytest.raises(UnknownDevice):
        controller.deployer.deploy("cam-zz", bundle.digest)
    with pytest.raises(UnknownBundle):
        controller.deployer.deploy("cam-a", "0" * 64)
    assert controller.deployer.list() == []


def test_publisher_never_has_more_than_its_cap_unacknowledged(mosquitto):
    received: queue.Queue[bytes | bytearray] = queue.Queue()
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="sub", protocol=mqtt.MQTTv311)
    sub.on_message = lambda _c, _u, m: received.put(m.payload)
    sub.connect(mosquitto.host, mosquitto.port)
    sub.subscribe("t/#", qos=1)
    sub.loop_start()
    publisher = Publisher(MqttSettings(port=mosquitto.port), 2, f"pub-{uuid.uuid4().hex[:6]}")
    publisher.start()
    try:
        assert publisher.wait_ready(5)
        wait_until("subscriber", lambda: sub.is_connected())
        sub.publish("t/ready", b"x", qos=1).wait_for_publish(5)
        assert received.get(timeout=5) == b"x"
        for i in range(200):
            publisher.publish("t/load", str(i).encode())
        got = [received.get(timeout=5) for _ in range(200)]
        assert sorted(int(g) for g in got) == list(range(200))
        wait_until("all acknowledged", lambda: publisher.inflight == 0)
        assert 1 <= publisher.peak_inflight <= 2
        assert publisher.published == 200
    finally:
        publisher.stop()
        sub.disconnect()
        sub.loop_stop()
