"""Command signing: the controller's own command key, and the warning before the root expires.

The controller holds public material (the root document) and one private key of its own, the
command key that `edgefleet keys add-command` made and listed in the root. Every command leaves
through `controller.mqtt.commands.CommandSender`, which stamps and signs it here.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TypeVar

from ota.commands import DEFAULT_COMMAND_TTL_S, sign_command
from ota.keys import SigningKey, is_encrypted_pem
from ota.root import is_root_document, parse_root
from protocol.messages import CommandEnvelope

log = logging.getLogger(__name__)

PASSPHRASE_ENV = "EDGEFLEET_KEY_PASSPHRASE"  # noqa: S105 - a variable's name, not a secret
"""Environment variable holding the passphrase of encrypted key files."""
ROOT_EXPIRY_WARNING_DAYS = 30

C = TypeVar("C", bound=CommandEnvelope)


class CommandKeyError(Exception):
    """The command key cannot be loaded, with what to do about it."""


class CommandSigner:
    """Stamps each command with a short life and signs it with the controller's command key."""

    def __init__(
        self,
        keys: Sequence[SigningKey],
        ttl_s: float = DEFAULT_COMMAND_TTL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not keys:
            raise ValueError("a command signer needs at least one key")
        self._keys = tuple(keys)
        self._ttl_s = ttl_s
        self._clock = clock

    @classmethod
    def from_file(
        cls, path: Path, ttl_s: float = DEFAULT_COMMAND_TTL_S, passphrase: bytes | None = None
    ) -> CommandSigner:
        """Load the command key at `path`; an encrypted one with `passphrase`, else with the
        one in $EDGEFLEET_KEY_PASSPHRASE.

        Raises CommandKeyError."""
        try:
            if passphrase is None and is_encrypted_pem(path):
                env = os.environ.get(PASSPHRASE_ENV)
                if not env:
                    raise CommandKeyError(f"{path} is encrypted; set {PASSPHRASE_ENV}")
                passphrase = env.encode("utf-8")
            key = SigningKey.load(path, passphrase)
        except (OSError, ValueError, TypeError) as exc:
            raise CommandKeyError(f"cannot load the command key {path}: {exc}") from exc
        return cls([key], ttl_s)

    @property
    def keyids(self) -> tuple[str, ...]:
        return tuple(key.keyid for key in self._keys)

    def sign(self, command: C) -> C:
        """A copy of `command` stamped now, expiring after the ttl, signed."""
        return sign_command(command, self._keys, now=self._clock(), ttl_s=self._ttl_s)


def root_expiry_warning(
    trust_path: Path, now: datetime | None = None, days: int = ROOT_EXPIRY_WARNING_DAYS
) -> str | None:
    """A warning when the root at `trust_path` expires within `days`; None otherwise, or when
    the file holds no root. Never raises."""
    try:
        data = Path(trust_path).read_bytes()
        if not is_root_document(data):
            return None
        root = parse_root(data)
    except (OSError, ValueError):
        return None
    now = now or datetime.now(timezone.utc)
    if not root.expires_within(now, days):
        return None
    left = (root.expires - now).total_seconds() / 86400
    when = "expired" if left < 0 else f"expires in {left:.0f} days"
    return (
        f"root version {root.version} {when} ({root.expires.isoformat()}); sign the next "
        "root (`edgefleet keys rotate-root --expires-days N`) and push it to every device"
    )


def load_command_signer(path: Path, ttl_s: float = DEFAULT_COMMAND_TTL_S) -> CommandSigner | None:
    """The signer for the key at `path`, or None (logged) when there is no such file.

    Raises CommandKeyError for a file that is there but cannot be loaded: a controller must not
    quietly fall back to unsigned commands because of a typo in a passphrase."""
    if not Path(path).exists():
        log.warning(
            "event=command_key_missing path=%s detail=%r",
            path,
            "commands go out unsigned; devices with command keys refuse them "
            "(edgefleet keys add-command)",
        )
        return None
    signer = CommandSigner.from_file(path, ttl_s)
    log.info("event=command_key_loaded keyid=%s ttl_s=%s", signer.keyids[0][:16], ttl_s)
    return signer


def log_root_expiry(trust_path: Path, days: int = ROOT_EXPIRY_WARNING_DAYS) -> str | None:
    """Log (and return) the warning of `root_expiry_warning`, if there is one."""
    warning = root_expiry_warning(trust_path, days=days)
    if warning is not None:
        log.warning("event=root_expiring path=%s detail=%r", trust_path, warning)
    return warning
