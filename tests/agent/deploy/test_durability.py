"""A deploy is acknowledged only once its offer is on disk, a command is taken from the broker
only once handled, and a deploy repeated during probation ends with the trial."""

from __future__ import annotations

import queue
from typing import cast

from agent.commands import CommandHandler, CommandTarget
from agent.deploy.pending import load_pending
from agent.link.session import AgentSession, BrokerSettings
from controller.demo.waiting import wait_until
from protocol.codec import encode
from protocol.events import DeviceStatus
from protocol.messages import BundleOffer, Deploy, RestartPipeline, State
from tests.agent.deploy.test_deployer import (
    PipelineHealth,
    Recorder,
    _deployer,
    _offer,
    _on_probation,
)


class DeployOnly:
    """A command target whose deploy is the real deployer's."""

    def __init__(self, deployer):
        self.deployer = deployer

    def deploy(self, command):
        self.deployer.on_deploy(command)


def only_deploy(deployer) -> CommandTarget:
    # the handler is given only deploys here, so the other commands' methods are never called
    return cast("CommandTarget", DeployOnly(deployer))


def test_the_offer_is_saved_before_the_deploy_is_acknowledged(tmp_path, trust, build_blazeface):
    built = build_blazeface(version=1)
    rec = Recorder()
    deployer = _deployer(tmp_path, trust, rec)
    command, _ = _offer(built, built.path.read_bytes())
    saved_at_ack = []
    acks = []

    def ack(cmd_id, ok, result, detail=""):
        saved_at_ack.append([p.digest for p in load_pending(tmp_path / "downloads")])
        acks.append((cmd_id, ok, result))

    CommandHandler(only_deploy(deployer), ack).handle(command)
    assert saved_at_ack == [[built.digest]]
    assert acks == [(command.id, True, "accepted")]


def test_a_deploy_that_cannot_be_saved_is_answered_with_a_failed_ack(
    tmp_path, trust, build_blazeface
):
    built = build_blazeface(version=1)
    rec = Recorder()
    deployer = _deployer(tmp_path, trust, rec)
    # the downloads folder cannot be created: a file sits where it should be
    (tmp_path / "downloads").write_bytes(b"not a folder")
    command, _ = _offer(built, built.path.read_bytes())
    acks = []
    CommandHandler(only_deploy(deployer), lambda *a: acks.append(a)).handle(command)
    assert len(acks) == 1
    assert acks[0][:3] == (command.id, False, "storage_error")


def test_a_deploy_repeated_during_probation_reaches_running_with_the_trial(
    tmp_path, trust, build_blazeface
):
    rec = Recorder()
    deployer, clock, _, second = _on_probation(tmp_path, trust, build_blazeface, rec)
    again, _ = _offer(second, second.path.read_bytes())
    deployer.on_deploy(again)
    assert rec.events[-1].kind == "probation" and rec.events[-1].cmd_id == again.id
    clock.now += 31
    deployer.tick()
    running = rec.of("running")
    assert {e.cmd_id for e in running} == {None, again.id}
    assert all(e.bundle == second.digest for e in running)


def test_a_deploy_repeated_during_a_failing_probation_ends_failed_and_rolled_back(
    tmp_path, trust, build_blazeface
):
    rec = Recorder()
    health = PipelineHealth(rec)
    deployer, clock, first, second = _on_probation(
        tmp_path, trust, build_blazeface, rec, health=health
    )
    again, _ = _offer(second, second.path.read_bytes())
    deployer.on_deploy(again)
    health.errors = 2
    clock.now += 31
    deployer.tick()
    assert again.id in {e.cmd_id for e in rec.of("failed")}
    assert again.id in {e.cmd_id for e in rec.of("rolled_back")}
    assert deployer.store.pointer().digest == first.digest


def _session(port: int, device: str) -> AgentSession:
    session = AgentSession(
        BrokerSettings(port=port), device, lambda: State(device=device, status=DeviceStatus.ONLINE)
    )
    session.start()
    assert session.connected.wait(10)
    return session


def _send(port: int, topic: str, payload: bytes) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-controller")
    client.connect("127.0.0.1", port, 30)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


def _receive(session: AgentSession, timeout: float = 10.0):
    return session.inbox.get(timeout=timeout)


def _drop(session: AgentSession) -> None:
    """The agent dies: the connection closes without a word (no PUBACK for what is pending)."""
    session.client.loop_stop()
    sock = session.client.socket()
    if sock is not None:
        sock.close()


def test_a_command_not_yet_done_comes_again_after_a_crash_and_a_done_one_does_not(mosquitto):
    device = "cam-durable"
    first = _session(mosquitto.port, device)
    topic = first.topics.cmd(device)
    try:
        lost = Deploy(
            device=device,
            bundle=BundleOffer(
                name="m", version=1, digest="ab" * 32, size=10, chunk_size=10, chunks=1
            ),
        )
        _send(mosquitto.port, topic, encode(lost))
        item = _receive(first)
        assert item.payload.id == lost.id and item.mid
    finally:
        _drop(first)  # killed before `done`: the broker still holds the command
    second = _session(mosquitto.port, device)
    try:
        again = _receive(second)
        assert again.payload.id == lost.id
        second.done(again)
        handled = RestartPipeline(device=device)
        _send(mosquitto.port, topic, encode(handled))
        item = _receive(second)
        assert item.payload.id == handled.id
        second.done(item)
        # the PUBACKs are on their way once the broker has answered a round trip
        wait_until("acks reached the broker", lambda: second.client.want_write() is False)
        second.stop()
        third = _session(mosquitto.port, device)
        try:
            try:
                extra = third.inbox.get(timeout=2.0)
            except queue.Empty:
                extra = None
            assert extra is None, f"redelivered after done: {extra}"
        finally:
            third.stop()
    finally:
        if second.client.is_connected():
            second.stop()
