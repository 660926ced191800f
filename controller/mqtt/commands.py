"""Commands to devices: the one way the controller sends a command on `…/dev/D/cmd`.

Deployments, snapshot requests and trust pushes all go through a CommandSender, so every command
is signed and encoded the same way, travels through the capped QoS 1 publisher and waits the same
bounded time for a free slot. Without a signer (no command key configured) commands go out
unsigned, and agents whose trust lists command keys refuse them as `unsigned`.
"""

from __future__ import annotations

from typing import Protocol

from controller.auth.signing import CommandSigner
from protocol.codec import encode
from protocol.messages import Command
from protocol.topics import Topics

DEFAULT_SEND_TIMEOUT_S = 10.0


class MessagePublisher(Protocol):
    """What commands are published through: the capped `Publisher`, or a test's recorder."""

    def publish(self, topic: str, payload: bytes, *, timeout: float = 30.0) -> None:
        """Publish at QoS 1; raises controller.mqtt.session.PublishError."""


class CommandSender:
    """Sends commands to devices, each on its device's command topic."""

    def __init__(
        self,
        publisher: MessagePublisher,
        topics: Topics,
        timeout_s: float = DEFAULT_SEND_TIMEOUT_S,
        signer: CommandSigner | None = None,
    ) -> None:
        self._publisher = publisher
        self._topics = topics
        self._timeout_s = timeout_s
        self._signer = signer

    def send(self, command: Command) -> None:
        """Sign `command`, encode it and publish it to the device it names.

        Raises controller.mqtt.session.PublishError when no publish slot frees up in time or
        the connection refuses the message.
        """
        if self._signer is not None:
            command = self._signer.sign(command)
        self._publisher.publish(
            self._topics.cmd(command.device), encode(command), timeout=self._timeout_s
        )
