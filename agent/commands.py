"""Commands from the controller: each one checked, handled once, dispatched by type, answered
with an ack.

Before anything is done, the `CommandGuard` checks what `ota.commands` checks (addressed to this
device, signed by the trust store's command keys, within its life) and that its id was not seen
before; a refused command is answered with a negative ack whose result is a CommandRefusal. The
ids seen are kept in a small SQLite file in the data folder until their command has expired, so
a replay is refused after a restart too, and the file never holds more than one replay window
of ids. What a command does lives with the part it acts on (the deployer, the pipeline, the
settings overlay, the trust store); this module only checks, routes and answers.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from ota.commands import CommandRefused, Freshness, verify_command
from ota.trust import TrustStore
from protocol.events import CommandRefusal
from protocol.messages import (
    Command,
    CommandEnvelope,
    Deploy,
    RestartPipeline,
    Rollback,
    SetConfig,
    Snapshot,
    TrustUpdate,
)

log = logging.getLogger(__name__)

SEEN_COMMANDS = 1000
"""How many recent command ids are remembered to drop redeliveries when no guard checks them."""
MAX_SEEN_IDS = 100_000
"""The most ids the seen store keeps; past it the ones expiring first go (and, having the
shortest life left, are the first whose replays the expiry check refuses anyway)."""


class SeenCommands:
    """The ids of commands handled, each kept until its command has expired; survives restarts.

    Safe to call from several threads. Raises sqlite3.Error (an OSError-like failure of the
    file) from each method."""

    def __init__(self, path: Path, max_ids: int = MAX_SEEN_IDS) -> None:
        self._lock = threading.Lock()
        self._max_ids = max_ids
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("CREATE TABLE IF NOT EXISTS seen (id TEXT PRIMARY KEY, until REAL)")

    def contains(self, cmd_id: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT 1 FROM seen WHERE id = ?", (cmd_id,)).fetchone()
        return row is not None

    def add(self, cmd_id: str, until: float, now: float) -> None:
        """Remember `cmd_id` until `until`; forgets every id whose time has passed."""
        with self._lock:
            self._db.execute("DELETE FROM seen WHERE until < ?", (now,))
            self._db.execute(
                "INSERT OR REPLACE INTO seen (id, until) VALUES (?, ?)", (cmd_id, until)
            )
            self._db.execute(
                "DELETE FROM seen WHERE id IN (SELECT id FROM seen ORDER BY until DESC "
                "LIMIT -1 OFFSET ?)",
                (self._max_ids,),
            )

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM seen").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


class CommandGuard:
    """Decides whether a command may be acted on: signature, device, life, and not seen before."""

    def __init__(
        self,
        device_id: str,
        trust: Callable[[], TrustStore],
        seen: SeenCommands,
        *,
        clock: Callable[[], float] = time.time,
        freshness: Freshness | None = None,
    ) -> None:
        self._device_id = device_id
        self._trust = trust
        self._seen = seen
        self._clock = clock
        self._freshness = freshness or Freshness()

    def check(self, command: CommandEnvelope) -> CommandRefused | None:
        """Why `command` must be refused, or None when it may be acted on; never raises."""
        try:
            store = self._trust()
        except (OSError, ValueError) as exc:
            return CommandRefused(CommandRefusal.NO_TRUST_STORE, str(exc)[:1000])
        try:
            verify_command(command, store, self._device_id, self._clock(), self._freshness)
        except CommandRefused as exc:
            return exc
        try:
            seen = self._seen.contains(command.id)
        except sqlite3.Error as exc:
            # a store that cannot say whether this is a replay must not let it through
            return CommandRefused(CommandRefusal.REPLAYED, f"seen-id store unreadable: {exc}")
        if seen:
            return CommandRefused(CommandRefusal.REPLAYED, f"command {command.id} was handled")
        return None

    def remember(self, command: CommandEnvelope) -> None:
        """Keep `command`'s id until it can no longer pass the expiry check. Raises
        sqlite3.Error."""
        now = self._clock()
        rules = self._freshness
        # an unsigned trust-update (a store from before signed commands) names no expiry
        end = command.exp if command.exp is not None else now + rules.window_s
        self._seen.add(command.id, until=max(end, now) + rules.skew_s, now=now)


class AckSender(Protocol):
    def __call__(self, cmd_id: str, ok: bool, result: str, detail: str = "") -> None: ...


class CommandTarget(Protocol):
    """What the agent does for each command; each returns what goes into the ack."""

    def deploy(self, command: Deploy) -> None: ...

    def rollback(self, cmd_id: str) -> tuple[bool, str, str]: ...

    def set_config(self, patch: dict[str, Any]) -> tuple[bool, str, str]: ...

    def restart_pipeline(self) -> str: ...

    def trust_update(self, command: TrustUpdate) -> tuple[bool, str, str]: ...

    def snapshot(self, command: Snapshot) -> None: ...


class CommandHandler:
    """Routes each new command to `target` and acknowledges it through `ack`.

    With a `guard` (the daemon always has one) every command is checked first and a refused one
    is answered with its CommandRefusal; without one, commands are only routed (tests of the
    routing itself) and a redelivery is dropped by its id."""

    def __init__(
        self,
        target: CommandTarget,
        ack: AckSender,
        remember: int = SEEN_COMMANDS,
        *,
        guard: CommandGuard | None = None,
    ):
        self._target = target
        self._ack = ack
        self._remember = remember
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._guard = guard

    def seen(self, cmd_id: str) -> bool:
        """True when `cmd_id` was handled already (a redelivery); remembers it otherwise."""
        if cmd_id in self._seen:
            return True
        self._seen[cmd_id] = None
        while len(self._seen) > self._remember:
            self._seen.popitem(last=False)
        return False

    def handle(self, command: Command) -> None:
        """Handle one command unless it is refused or a redelivery. Raises what the target
        raises (the id is then not remembered, so a redelivery is handled again)."""
        guard = self._guard
        if guard is not None:
            refused = guard.check(command)
            if refused is not None:
                log.warning(
                    "event=command_refused cmd=%s type=%s reason=%s detail=%r",
                    command.id,
                    command.type,
                    refused.reason,
                    refused.detail,
                )
                self._ack(command.id, False, refused.reason, refused.detail[:4096])
                return
        elif self.seen(command.id):
            log.info("event=command_redelivered cmd=%s type=%s", command.id, command.type)
            return
        self._dispatch(command)
        if guard is not None:
            guard.remember(command)

    def _dispatch(self, command: Command) -> None:
        target = self._target
        if isinstance(command, Deploy):
            # acknowledged once the deployer saved the offer: a crash before that point leaves
            # the command unacknowledged, so the broker delivers it again; progress follows as
            # events
            try:
                target.deploy(command)
            except OSError as exc:
                log.error("event=deploy_not_saved cmd=%s error=%r", command.id, str(exc))
                self._ack(command.id, False, "storage_error", str(exc)[:4096])
                return
            self._ack(command.id, True, "accepted")
        elif isinstance(command, SetConfig):
            self._ack(command.id, *target.set_config(command.config))
        elif isinstance(command, Snapshot):
            target.snapshot(command)  # acknowledged by the delivery thread once sent
        elif isinstance(command, TrustUpdate):
            self._ack(command.id, *target.trust_update(command))
        elif isinstance(command, Rollback):
            self._ack(command.id, *target.rollback(command.id))
        elif isinstance(command, RestartPipeline):
            self._ack(command.id, True, "restarted", target.restart_pipeline())
