"""The device's trust store: which release keys may sign bundles, which command keys may sign
commands, and how many of each must.

A pure value: `ota.root` derives one from a root document, `ota.trust_file` reads and writes it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ota.keys import PublicKey


class TrustStore(BaseModel):
    """Release keys by keyid, the signature threshold and the revoked keyids."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    release_keys: dict[str, str] = Field(
        default_factory=dict, description="keyid -> raw Ed25519 public key, hex"
    )
    threshold: Annotated[int, Field(ge=1)] = 1
    revoked: frozenset[str] = Field(
        default_factory=frozenset, description="keyids whose signatures never count"
    )
    expires: datetime | None = Field(
        default=None, description="when the root this store came from expires; None: never"
    )
    root_version: int | None = Field(
        default=None, description="version of the root document this store came from"
    )
    command_keys: dict[str, str] = Field(
        default_factory=dict,
        description="keyid -> raw Ed25519 public key, hex, of the keys that sign commands; "
        "empty: a store from before signed commands (see ota.root)",
    )
    command_threshold: Annotated[int, Field(ge=1)] = 1

    @model_validator(mode="after")
    def _keys_match_ids(self) -> TrustStore:
        for keyid, key_hex in self.release_keys.items():
            # a keyid that is not the key's own digest would let one key count as two
            if PublicKey.from_hex(key_hex).keyid != keyid:
                raise ValueError(f"keyid {keyid[:16]}... does not match its key")
        if self.threshold > len(self.release_keys):
            raise ValueError(
                f"threshold {self.threshold} exceeds the {len(self.release_keys)} release keys"
            )
        for keyid, key_hex in self.command_keys.items():
            if PublicKey.from_hex(key_hex).keyid != keyid:
                raise ValueError(f"command keyid {keyid[:16]}... does not match its key")
        if self.command_keys and self.command_threshold > len(self.command_keys):
            raise ValueError(
                f"command threshold {self.command_threshold} exceeds the "
                f"{len(self.command_keys)} command keys"
            )
        return self

    @classmethod
    def from_keys(
        cls,
        keys: Iterable[PublicKey],
        threshold: int = 1,
        revoked: Iterable[str] = (),
        *,
        command_keys: Iterable[PublicKey] = (),
        command_threshold: int = 1,
    ) -> TrustStore:
        """Build a store trusting `keys` for bundles and `command_keys` for commands.
        Raises pydantic.ValidationError."""
        return cls(
            release_keys={key.keyid: key.to_hex() for key in keys},
            threshold=threshold,
            revoked=frozenset(revoked),
            command_keys={key.keyid: key.to_hex() for key in command_keys},
            command_threshold=command_threshold,
        )

    def trusted_key(self, keyid: str) -> PublicKey | None:
        """The key whose signatures count for `keyid`; None if unknown or revoked."""
        if keyid in self.revoked or keyid not in self.release_keys:
            return None
        return PublicKey.from_hex(self.release_keys[keyid])

    def trusted_command_key(self, keyid: str) -> PublicKey | None:
        """The command key whose signatures count for `keyid`; None if unknown or revoked."""
        if keyid in self.revoked or keyid not in self.command_keys:
            return None
        return PublicKey.from_hex(self.command_keys[keyid])

    def revoke(self, keyid: str) -> TrustStore:
        """A copy in which `keyid`'s signatures no longer count."""
        return self.model_copy(update={"revoked": self.revoked | {keyid}})

    def to_json(self) -> bytes:
        """The store as a trust file holds it: the same store always gives the same bytes."""
        data = self.model_dump(mode="json", exclude_none=True)
        data["revoked"] = sorted(self.revoked)
        return (json.dumps(data, sort_keys=True, indent=2) + "\n").encode("utf-8")
