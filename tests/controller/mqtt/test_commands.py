"""Commands to devices go out one way: encoded, on the device's command topic, bounded in time."""

from __future__ import annotations

import time

import pytest

from controller.auth.signing import CommandSigner
from controller.mqtt.commands import CommandSender
from controller.mqtt.session import PublishError
from ota.commands import verify_command
from ota.keys import SigningKey
from ota.trust import TrustStore
from protocol.codec import decode_command
from protocol.messages import RestartPipeline, TrustUpdate
from protocol.topics import Topics


class Recorder:
    """Stands in for the publisher: keeps what would have been published, or refuses."""

    def __init__(self, refuse: bool = False) -> None:
        self.refuse = refuse
        self.sent: list[tuple[str, bytes, float]] = []

    def publish(self, topic: str, payload: bytes, *, timeout: float = 30.0) -> None:
        if self.refuse:
            raise PublishError("3 publishes unacknowledged for 0.5s")
        self.sent.append((topic, payload, timeout))


def test_a_command_goes_to_its_device_topic_encoded():
    recorder = Recorder()
    topics = Topics("fleet-a/v1")
    sender = CommandSender(recorder, topics, timeout_s=2.5)
    command = TrustUpdate(device="cam-7", roots=("{}",))
    sender.send(command)
    sender.send(RestartPipeline(device="cam-8"))
    (topic, payload, timeout), (second_topic, _, _) = recorder.sent
    assert (topic, timeout) == (topics.cmd("cam-7"), 2.5)
    assert second_topic == topics.cmd("cam-8")
    decoded = decode_command(payload)
    assert isinstance(decoded, TrustUpdate) and decoded.id == command.id


def test_a_refused_publish_reaches_the_caller():
    with pytest.raises(PublishError):
        CommandSender(Recorder(refuse=True), Topics()).send(RestartPipeline(device="cam-7"))


def test_with_a_signer_every_command_leaves_signed_and_short_lived():
    recorder = Recorder()
    key = SigningKey.generate()
    sender = CommandSender(recorder, Topics(), signer=CommandSigner([key], ttl_s=120))
    command = RestartPipeline(device="cam-7", ts=1.0)
    sender.send(command)
    ((_, payload, _),) = recorder.sent
    sent = decode_command(payload)
    assert sent.id == command.id and sent.exp is not None
    assert sent.exp - sent.ts == 120 and abs(sent.ts - time.time()) < 5
    trust = TrustStore.from_keys(
        [SigningKey.generate().public_key()], command_keys=[key.public_key()]
    )
    verify_command(sent, trust, "cam-7", time.time())
