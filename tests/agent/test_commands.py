"""Commands are routed by type, answered once, and a redelivered command is dropped."""

from __future__ import annotations

from typing import Any

from agent.commands import CommandHandler
from protocol.messages import (
    BundleOffer,
    Deploy,
    RestartPipeline,
    Rollback,
    SetConfig,
    Snapshot,
    TrustUpdate,
)

DIGEST = "ab" * 32


class Target:
    def __init__(self, rolls_back: bool = True) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.rolls_back = rolls_back

    def deploy(self, command: Deploy) -> None:
        self.calls.append(("deploy", command.bundle.digest))

    def rollback(self, cmd_id: str) -> bool:
        self.calls.append(("rollback", cmd_id))
        return self.rolls_back

    def set_config(self, patch: dict[str, Any]) -> tuple[bool, str, str]:
        self.calls.append(("set_config", patch))
        return False, "invalid_config", "cameras: too many"

    def restart_pipeline(self) -> str:
        self.calls.append(("restart_pipeline", None))
        return "cameras=none model=none"

    def trust_update(self, command: TrustUpdate) -> tuple[bool, str, str]:
        self.calls.append(("trust_update", len(command.roots)))
        return True, "trust_updated", "root version 2"

    def snapshot(self, command: Snapshot) -> None:
        self.calls.append(("snapshot", command.track_id))


def handler(target: Target, remember: int = 1000) -> tuple[CommandHandler, list[tuple]]:
    acks: list[tuple] = []

    def ack(cmd_id: str, ok: bool, result: str, detail: str = "") -> None:
        acks.append((cmd_id, ok, result, detail))

    return CommandHandler(target, ack, remember=remember), acks


def offer() -> BundleOffer:
    return BundleOffer(name="m", version=1, digest=DIGEST, size=10, chunk_size=10, chunks=1)


def test_each_command_reaches_its_target_and_is_answered():
    target = Target()
    commands, acks = handler(target)
    deploy = Deploy(device="cam-01", bundle=offer())
    config = SetConfig(device="cam-01", config={"cameras": []})
    restart = RestartPipeline(device="cam-01")
    trust = TrustUpdate(device="cam-01", roots=("{}",))
    snap = Snapshot(device="cam-01", camera="door", track_id=3)
    for command in (deploy, config, restart, trust, snap):
        commands.handle(command)
    assert target.calls == [
        ("deploy", DIGEST),
        ("set_config", {"cameras": []}),
        ("restart_pipeline", None),
        ("trust_update", 1),
        ("snapshot", 3),
    ]
    # the snapshot is acknowledged by its delivery, not here
    assert acks == [
        (deploy.id, True, "accepted", ""),
        (config.id, False, "invalid_config", "cameras: too many"),
        (restart.id, True, "restarted", "cameras=none model=none"),
        (trust.id, True, "trust_updated", "root version 2"),
    ]


def test_rollback_says_whether_there_was_anything_to_roll_back():
    for rolls_back, answer in ((True, "rolled_back"), (False, "nothing_to_roll_back")):
        commands, acks = handler(Target(rolls_back))
        command = Rollback(device="cam-01")
        commands.handle(command)
        assert acks == [(command.id, rolls_back, answer, "")]


def test_a_redelivered_command_is_dropped_without_a_second_ack():
    target = Target()
    commands, acks = handler(target)
    command = Rollback(device="cam-01")
    commands.handle(command)
    commands.handle(command)
    assert len(target.calls) == 1 and len(acks) == 1


def test_only_the_most_recent_ids_are_remembered():
    target = Target()
    commands, acks = handler(target, remember=2)
    first, second, third = (Rollback(device="cam-01") for _ in range(3))
    for command in (first, second, third):
        commands.handle(command)
    commands.handle(third)  # still remembered
    commands.handle(first)  # forgotten: handled again
    assert [cmd_id for cmd_id, *_ in acks] == [first.id, second.id, third.id, first.id]
