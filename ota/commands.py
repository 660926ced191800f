"""Signed commands: the bytes a command key signs, signing them, and the device's checks.

A pure core like `ota.root`: functions take the command, the trust store, the device id and the
time, and return or raise `CommandRefused`; where the seen ids live is the agent's business.

What is signed is the canonical JSON (`ota.canonical`) of the whole command as its model holds
it, every field but `sigs`: type, id, ts, device, exp and the command's own fields. So a
signature binds the command to one device (`device`), to a short life (`ts` .. `exp`) and to
one use (`id`, the nonce the agent remembers until `exp` has passed). A field the receiving
agent does not know is not part of what it checks, so such a command fails `bad_signature`:
new command fields need agents that know them before a controller sends them.

The root's own expiry does not stop commands (it stops bundles, `ota.verify`): a device whose
root ran out while it was offline must still take the signed trust-update that renews it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from ota.canonical import canonical_json
from ota.keys import SigningKey
from ota.trust import TrustStore
from protocol.events import CommandRefusal
from protocol.messages import CommandEnvelope, CommandSignature, TrustUpdate

DEFAULT_COMMAND_TTL_S = 300.0
"""How long a command stays valid after the controller signs it."""
REPLAY_WINDOW_S = 900.0
"""The longest life a device accepts (`exp` - `ts`), and how far back `ts` may lie; the ids seen
are remembered this long, so nothing older can be replayed once they are forgotten."""
CLOCK_SKEW_S = 120.0
"""How far the device's clock may differ from the controller's."""

C = TypeVar("C", bound=CommandEnvelope)


class CommandRefused(ValueError):
    """A command the device must not act on, with the reason its ack carries."""

    def __init__(self, reason: CommandRefusal, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail

    def __reduce__(self) -> tuple[type[CommandRefused], tuple[CommandRefusal, str]]:
        return (type(self), (self.reason, self.detail))


@dataclass(frozen=True)
class Freshness:
    """The time rules: how long a command may live and how far clocks may differ."""

    window_s: float = REPLAY_WINDOW_S
    skew_s: float = CLOCK_SKEW_S


def signing_bytes(command: CommandEnvelope) -> bytes:
    """The canonical bytes command keys sign: the whole command except its signatures."""
    return canonical_json(command.model_dump(mode="json", exclude_none=True, exclude={"sigs"}))


def sign_command(command: C, keys: Sequence[SigningKey], *, now: float, ttl_s: float) -> C:
    """A copy of `command` stamped at `now`, valid for `ttl_s` seconds, signed by each key.

    Raises ValueError for a ttl that is not positive."""
    if ttl_s <= 0:
        raise ValueError(f"command ttl must be positive, got {ttl_s}")
    stamped = command.model_copy(update={"ts": now, "exp": now + ttl_s, "sigs": ()})
    message = signing_bytes(stamped)
    sigs = tuple(
        CommandSignature(keyid=key.keyid, sig=key.sign(message).hex())
        for key in {key.keyid: key for key in keys}.values()
    )
    return stamped.model_copy(update={"sigs": sigs})


def verify_command(
    command: CommandEnvelope,
    store: TrustStore,
    device_id: str,
    now: float,
    freshness: Freshness = Freshness(),
) -> None:
    """Refuse `command` unless it is for `device_id`, signed by a threshold of the store's
    command keys and within its life; replays are the caller's check.

    A store without command keys (from before signed commands) accepts only `trust-update`,
    whose root documents vouch for themselves (see `ota.root`).

    Raises CommandRefused (misaddressed, no_command_keys, unsigned, unknown_key,
    bad_signature, threshold_not_met, expired, not_yet_valid)."""
    if command.device != device_id:
        raise CommandRefused(
            CommandRefusal.MISADDRESSED, f"for {command.device!r}, this is {device_id!r}"
        )
    if not store.command_keys:
        if isinstance(command, TrustUpdate):
            return
        raise CommandRefused(
            CommandRefusal.NO_COMMAND_KEYS, "the trust store lists no command keys"
        )
    _check_signatures(command, store)
    _check_freshness(command, now, freshness)


def _check_signatures(command: CommandEnvelope, store: TrustStore) -> None:
    if not command.sigs:
        kind = getattr(command, "type", "command")
        raise CommandRefused(CommandRefusal.UNSIGNED, f"{kind} carries no signature")
    message = signing_bytes(command)
    valid: set[str] = set()
    known = bad = 0
    for entry in command.sigs:
        key = store.trusted_command_key(entry.keyid)
        if key is None:
            continue
        known += 1
        # counted by keyid, so one signature repeated never reaches a threshold
        if key.verify(bytes.fromhex(entry.sig), message):
            valid.add(entry.keyid)
        else:
            bad += 1
    if len(valid) >= store.command_threshold:
        return
    if known == 0:
        raise CommandRefused(
            CommandRefusal.UNKNOWN_KEY,
            f"signed by {command.sigs[0].keyid[:16]}..., not a command key of this device",
        )
    if bad:
        raise CommandRefused(
            CommandRefusal.BAD_SIGNATURE, f"{bad} signature(s) do not match the command"
        )
    raise CommandRefused(
        CommandRefusal.THRESHOLD_NOT_MET,
        f"{len(valid)} of {store.command_threshold} required command-key signatures",
    )


def _check_freshness(command: CommandEnvelope, now: float, rules: Freshness) -> None:
    exp = command.exp
    if exp is None:
        raise CommandRefused(CommandRefusal.EXPIRED, "the command carries no expiry")
    if now > exp + rules.skew_s:
        raise CommandRefused(CommandRefusal.EXPIRED, f"expired {now - exp:.0f} s ago")
    if command.ts > now + rules.skew_s:
        raise CommandRefused(
            CommandRefusal.NOT_YET_VALID, f"stamped {command.ts - now:.0f} s in the future"
        )
    if exp - command.ts > rules.window_s:
        # a longer life would outlast the memory of seen ids, and so allow a replay
        raise CommandRefused(
            CommandRefusal.EXPIRED,
            f"lives {exp - command.ts:.0f} s, longer than the {rules.window_s:.0f} s window",
        )
    if command.ts < now - rules.window_s - rules.skew_s:
        raise CommandRefused(
            CommandRefusal.EXPIRED, f"stamped {now - command.ts:.0f} s ago, outside the window"
        )
