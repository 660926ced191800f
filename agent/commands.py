"""Commands from the controller: each one handled once, dispatched by type, answered with an ack.

QoS 1 may deliver a command twice, so the ids of recent commands are remembered and a repeat is
dropped without a second ack. What a command does lives with the part it acts on (the deployer,
the pipeline, the settings overlay, the trust store); this module only routes and answers.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any, Protocol

from protocol.messages import (
    Command,
    Deploy,
    RestartPipeline,
    Rollback,
    SetConfig,
    Snapshot,
    TrustUpdate,
)

log = logging.getLogger(__name__)

SEEN_COMMANDS = 1000
"""How many recent command ids are remembered to drop redeliveries."""


class AckSender(Protocol):
    def __call__(self, cmd_id: str, ok: bool, result: str, detail: str = "") -> None: ...


class CommandTarget(Protocol):
    """What the agent does for each command; each returns what goes into the ack."""

    def deploy(self, command: Deploy) -> None: ...

    def rollback(self, cmd_id: str) -> bool: ...

    def set_config(self, patch: dict[str, Any]) -> tuple[bool, str, str]: ...

    def restart_pipeline(self) -> str: ...

    def trust_update(self, command: TrustUpdate) -> tuple[bool, str, str]: ...

    def snapshot(self, command: Snapshot) -> None: ...


class CommandHandler:
    """Routes each new command to `target` and acknowledges it through `ack`."""

    def __init__(self, target: CommandTarget, ack: AckSender, remember: int = SEEN_COMMANDS):
        self._target = target
        self._ack = ack
        self._remember = remember
        self._seen: OrderedDict[str, None] = OrderedDict()

    def seen(self, cmd_id: str) -> bool:
        """True when `cmd_id` was handled already (a redelivery); remembers it otherwise."""
        if cmd_id in self._seen:
            return True
        self._seen[cmd_id] = None
        while len(self._seen) > self._remember:
            self._seen.popitem(last=False)
        return False

    def handle(self, command: Command) -> None:
        """Handle one command unless it is a redelivery. Raises what the target raises."""
        if self.seen(command.id):
            log.info("event=command_redelivered cmd=%s type=%s", command.id, command.type)
            return
        target = self._target
        if isinstance(command, Deploy):
            # acknowledged first: the deployment's progress follows as events
            self._ack(command.id, True, "accepted")
            target.deploy(command)
        elif isinstance(command, SetConfig):
            self._ack(command.id, *target.set_config(command.config))
        elif isinstance(command, Snapshot):
            target.snapshot(command)  # acknowledged by the delivery thread once sent
        elif isinstance(command, TrustUpdate):
            self._ack(command.id, *target.trust_update(command))
        elif isinstance(command, Rollback):
            rolled_back = target.rollback(command.id)
            self._ack(
                command.id, rolled_back, "rolled_back" if rolled_back else "nothing_to_roll_back"
            )
        elif isinstance(command, RestartPipeline):
            self._ack(command.id, True, "restarted", target.restart_pipeline())
