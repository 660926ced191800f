"""Commands are checked, routed by type, answered once; redeliveries and replays are dropped."""

from __future__ import annotations

from typing import Any

import pytest

from agent.commands import CommandGuard, CommandHandler, SeenCommands
from ota.commands import REPLAY_WINDOW_S, sign_command
from ota.keys import SigningKey
from ota.trust import TrustStore
from ota.trust_file import load_trust_store, save_trust_store
from protocol.events import CommandRefusal
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

    def rollback(self, cmd_id: str) -> tuple[bool, str, str]:
        self.calls.append(("rollback", cmd_id))
        if self.rolls_back:
            return True, "rolled_back", ""
        return False, "no_previous_bundle", "nothing intact to roll back to"

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


def test_rollback_is_answered_with_what_the_target_says():
    for rolls_back, answer in (
        (True, ("rolled_back", "")),
        (False, ("no_previous_bundle", "nothing intact to roll back to")),
    ):
        commands, acks = handler(Target(rolls_back))
        command = Rollback(device="cam-01")
        commands.handle(command)
        assert acks == [(command.id, rolls_back, *answer)]


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


# ---- the guard: signatures, device, life, replays ------------------------------------------


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def signed(tmp_path):
    """A guarded handler for device cam-01 whose trust lists one command key, and a signer."""
    key = SigningKey.generate()
    trust_path = tmp_path / "trust.json"
    save_trust_store(
        TrustStore.from_keys([SigningKey.generate().public_key()], command_keys=[key.public_key()]),
        trust_path,
    )
    clock = Clock(1_800_000_000.0)
    opened: list[SeenCommands] = []

    def make() -> tuple[CommandHandler, Target, list[tuple]]:
        seen = SeenCommands(tmp_path / "seen.sqlite")
        opened.append(seen)
        guard = CommandGuard("cam-01", lambda: load_trust_store(trust_path), seen, clock=clock)
        target = Target()
        acks: list[tuple] = []
        commands = CommandHandler(target, lambda *a: acks.append(a), guard=guard)
        return commands, target, acks

    def sign(command, *, at: float | None = None, ttl: float = 300.0):
        return sign_command(command, [key], now=clock.now if at is None else at, ttl_s=ttl)

    yield make, sign, clock, tmp_path
    for seen in opened:
        seen.close()


def test_a_signed_command_is_handled_and_its_id_remembered(signed):
    make, sign, _, _ = signed
    commands, target, acks = make()
    command = sign(RestartPipeline(device="cam-01"))
    commands.handle(command)
    assert target.calls == [("restart_pipeline", None)]
    assert acks == [(command.id, True, "restarted", "cameras=none model=none")]


def test_a_replay_after_a_restart_is_refused(signed):
    make, sign, _, _ = signed
    commands, _, _ = make()
    command = sign(RestartPipeline(device="cam-01"))
    commands.handle(command)
    again, target_after, acks = make()  # a new process on the same data folder
    again.handle(command)
    assert target_after.calls == []
    assert acks[0][:3] == (command.id, False, CommandRefusal.REPLAYED)


def test_seen_ids_are_forgotten_once_their_command_expired(signed):
    _, _, _, tmp_path = signed
    seen = SeenCommands(tmp_path / "forget.sqlite")
    try:
        seen.add("old-command", until=100.0, now=50.0)
        seen.add("new-command", until=500.0, now=200.0)
        assert not seen.contains("old-command") and seen.contains("new-command")
        assert len(seen) == 1
    finally:
        seen.close()


def test_the_seen_store_keeps_at_most_its_cap(signed):
    _, _, _, tmp_path = signed
    seen = SeenCommands(tmp_path / "capped.sqlite", max_ids=3)
    try:
        for n in range(5):
            seen.add(f"command-{n}", until=1000.0 + n, now=0.0)
        assert len(seen) == 3 and seen.contains("command-4") and not seen.contains("command-0")
    finally:
        seen.close()


@pytest.mark.parametrize(
    ("shift", "reason"),
    [(-400.0 - 130.0, CommandRefusal.EXPIRED), (+200.0, CommandRefusal.NOT_YET_VALID)],
)
def test_a_command_outside_its_life_is_refused(signed, shift, reason):
    make, sign, clock, _ = signed
    commands, target, acks = make()
    command = sign(Rollback(device="cam-01"), at=clock.now + shift)
    commands.handle(command)
    assert target.calls == [] and acks[0][2] == reason


def test_a_command_living_longer_than_the_window_is_refused(signed):
    make, sign, _, _ = signed
    commands, target, acks = make()
    commands.handle(sign(Rollback(device="cam-01"), ttl=REPLAY_WINDOW_S + 60))
    assert target.calls == [] and acks[0][2] == CommandRefusal.EXPIRED


def test_an_unreadable_trust_store_refuses_every_command(signed):
    make, sign, _, tmp_path = signed
    commands, target, acks = make()
    (tmp_path / "trust.json").write_text("{not json")
    commands.handle(sign(Rollback(device="cam-01")))
    assert target.calls == [] and acks[0][2] == CommandRefusal.NO_TRUST_STORE


def test_a_store_without_command_keys_takes_only_a_trust_update(tmp_path):
    trust_path = tmp_path / "trust.json"
    save_trust_store(TrustStore.from_keys([SigningKey.generate().public_key()]), trust_path)
    seen = SeenCommands(tmp_path / "seen.sqlite")
    try:
        guard = CommandGuard("cam-01", lambda: load_trust_store(trust_path), seen)
        target = Target()
        acks: list[tuple] = []
        commands = CommandHandler(target, lambda *a: acks.append(a), guard=guard)
        update = TrustUpdate(device="cam-01", roots=("{}",))
        rollback = Rollback(device="cam-01")
        commands.handle(update)
        commands.handle(rollback)
        assert target.calls == [("trust_update", 1)]
        assert acks[1][:3] == (rollback.id, False, CommandRefusal.NO_COMMAND_KEYS)
        assert seen.contains(update.id)
    finally:
        seen.close()
