"""The device's trust file: read it, write it atomically, and step its root document forward.

The file holds either a signed root document (whose release role is the store) or a plain
store. The checks themselves are the pure ones of `ota.root` and `ota.trust`; this module only
adds the reading and the atomic writing.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

from ota.atomic import write_atomic
from ota.errors import RootRefused
from ota.root import (
    Root,
    is_root_document,
    parse_root,
    require_fresh,
    trust_store_from_bytes,
    update_root,
)
from ota.trust import TrustStore
from protocol.events import RefusalReason


def load_trust_store(path: Path) -> TrustStore:
    """Read a store saved by `save_trust_store`, or derive it from a signed root document.

    A root's expiry is not checked here but by `verify_bundle`, so an expired root refuses
    bundles as `expired`. Raises OSError, pydantic.ValidationError, ota.errors.RootRefused
    (both ValueError)."""
    return trust_store_from_bytes(Path(path).read_bytes())


def save_trust_store(store: TrustStore, path: Path) -> None:
    """Write `store` as a plain trust file, atomically. Raises OSError."""
    write_atomic(Path(path), store.to_json())


def apply_root_update(path: Path, new_data: bytes, now: datetime) -> int:
    """Replace the root document at `path` with `new_data` if it is the valid next version;
    the new root's version. Resending the current root is accepted and changes nothing.

    Raises ota.errors.RootRefused (no_root when `path` holds a plain store, or why
    `update_root` refused), OSError."""
    current, current_data = _trusted_root(path)
    if new_data == current_data:
        return current.version
    new = update_root(current, new_data, now)
    write_atomic(Path(path), new.raw)
    return new.version


def apply_root_chain(path: Path, documents: Iterable[bytes], now: datetime) -> int:
    """Step the root at `path` through `documents`, oldest first; the version trusted at the end.
    Documents not newer than the trusted root are skipped, so a resent or overlapping chain is
    harmless.

    As TUF does, each intermediate root's signatures and version are checked but only the
    newest root's expiry, so a device offline past an intermediate root's expiry still gets
    through. The newest root reached is written once, and only when it has not expired; a
    refusal part-way keeps the progress made up to that document.

    Raises ota.errors.RootRefused (no_root, expired when the newest root reached has expired,
    or why a document was refused), OSError."""
    trusted, _ = _trusted_root(path)
    current = trusted
    refused: RootRefused | None = None
    for data in documents:
        try:
            if parse_root(data).version <= current.version:
                continue
            current = update_root(current, data, now, check_expiry=False)
        except RootRefused as exc:
            refused = exc
            break
    if current is not trusted:
        require_fresh(current, now)
        write_atomic(Path(path), current.raw)
    if refused is not None:
        raise refused
    return current.version


def _trusted_root(path: Path) -> tuple[Root, bytes]:
    data = Path(path).read_bytes()
    if not is_root_document(data):
        # a plain store names no root keys, so nothing could vouch for a new root
        raise RootRefused(RefusalReason.NO_ROOT, f"{path} holds release keys but no root")
    return parse_root(data), data
