"""The device's trust store: which release keys may sign bundles, and how many must."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ota.atomic import write_atomic
from ota.keys import PublicKey

if TYPE_CHECKING:
    from ota.root import Root


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
        return self

    @classmethod
    def from_keys(
        cls, keys: Iterable[PublicKey], threshold: int = 1, revoked: Iterable[str] = ()
    ) -> TrustStore:
        """Build a store trusting `keys`. Raises pydantic.ValidationError."""
        return cls(
            release_keys={key.keyid: key.to_hex() for key in keys},
            threshold=threshold,
            revoked=frozenset(revoked),
        )

    def trusted_key(self, keyid: str) -> PublicKey | None:
        """The key whose signatures count for `keyid`; None if unknown or revoked."""
        if keyid in self.revoked or keyid not in self.release_keys:
            return None
        return PublicKey.from_hex(self.release_keys[keyid])

    def revoke(self, keyid: str) -> TrustStore:
        """A copy in which `keyid`'s signatures no longer count."""
        return self.model_copy(update={"revoked": self.revoked | {keyid}})

    @classmethod
    def load(cls, path: Path) -> TrustStore:
        """Read a store saved by `save`, or derive it from a signed root document.

        A root's expiry is not checked here but by `verify_bundle`, so an expired root refuses
        bundles as `expired`. Raises OSError, pydantic.ValidationError, ota.errors.RootRefused
        (both ValueError)."""
        # imported here: ota.root builds TrustStores, so a top-level import would be a cycle
        from ota.root import is_root_document, parse_root

        data = Path(path).read_bytes()
        if is_root_document(data):
            return parse_root(data).trust_store()
        return cls.model_validate_json(data)

    def save(self, path: Path) -> None:
        """Write the store as JSON, atomically. Raises OSError."""
        data = self.model_dump(mode="json", exclude_none=True)
        # sorted so that the same store always gives the same file
        data["revoked"] = sorted(self.revoked)
        text = json.dumps(data, sort_keys=True, indent=2) + "\n"
        write_atomic(Path(path), text.encode("utf-8"))


def _trusted_root(path: Path) -> tuple[Root, bytes]:
    from ota.errors import RefusalReason, RootRefused
    from ota.root import is_root_document, parse_root

    data = Path(path).read_bytes()
    if not is_root_document(data):
        # a plain store names no root keys, so nothing could vouch for a new root
        raise RootRefused(RefusalReason.NO_ROOT, f"{path} holds release keys but no root")
    return parse_root(data), data


def apply_root_update(path: Path, new_data: bytes, now: datetime) -> int:
    """Replace the root document at `path` with `new_data` if it is the valid next version;
    the new root's version. Resending the current root is accepted and changes nothing.

    Raises ota.errors.RootRefused (no_root when `path` holds a plain store, or why
    `update_root` refused), OSError."""
    from ota.root import update_root

    current, current_data = _trusted_root(path)
    if new_data == current_data:
        return current.version
    new = update_root(current, new_data, now)
    write_atomic(Path(path), new.raw)
    return new.version


def apply_root_chain(path: Path, documents: Iterable[bytes], now: datetime) -> int:
    """Step the root at `path` through `documents`, oldest first, writing each accepted one;
    the version trusted at the end. Documents not newer than the trusted root are skipped, so
    a resent or overlapping chain is harmless.

    Raises ota.errors.RootRefused (no_root, or at the first document refused), OSError."""
    from ota.root import parse_root, update_root

    current, _ = _trusted_root(path)
    for data in documents:
        if parse_root(data).version <= current.version:
            continue
        current = update_root(current, data, now)
        # each step is written at once: a later refusal keeps the progress made
        write_atomic(Path(path), current.raw)
    return current.version
