"""Install verified bundles into A/B slots and switch between them atomically (device side).

Layout under `root`: `slots/a`, `slots/b` (each `files/…`, `manifest.json`, `install.json`),
`current` (which slot is live) and `versions.json` (the anti-rollback floor per bundle name).
One process owns a store at a time.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import BinaryIO, Literal

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from ota.atomic import fsync_dir, write_atomic
from ota.errors import BundleRefused, RefusalReason
from ota.manifest import Manifest, canonical_json
from ota.trust import TrustStore
from ota.unpack import DirectorySink
from ota.verify import DEFAULT_CLOCK_SKEW, DEFAULT_MAX_BUNDLE_BYTES, verify_bundle

Slot = Literal["a", "b"]
_OTHER: dict[Slot, Slot] = {"a": "b", "b": "a"}
_FLOORS = TypeAdapter(dict[str, int])
_CHUNK = 1 << 20


class StoreCorrupt(Exception):
    """The `current` pointer names a slot whose install is missing or inconsistent."""


class SlotRecord(BaseModel):
    """What a slot holds; also the content of the `current` pointer."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    slot: Slot
    digest: str
    name: str
    version: int


@dataclass(frozen=True)
class InstalledBundle:
    """A verified bundle as it lies in its slot."""

    slot_dir: Path
    digest: str
    manifest: Manifest

    @property
    def files_dir(self) -> Path:
        return self.slot_dir / "files"

    def path_of(self, bundle_path: str) -> Path:
        """Where the file the manifest calls `bundle_path` lies on disk."""
        return self.files_dir / bundle_path


class BundleStore:
    """Two slots and a pointer: install into the idle slot, then switch."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        for slot in _OTHER:
            self._slot_dir(slot).mkdir(parents=True, exist_ok=True)

    def install(
        self,
        bundle_path: Path,
        trust: TrustStore,
        now: datetime,
        profile: str | None = None,
        *,
        max_bundle_bytes: int = DEFAULT_MAX_BUNDLE_BYTES,
        clock_skew: timedelta = DEFAULT_CLOCK_SKEW,
    ) -> InstalledBundle:
        """Verify `bundle_path` into the idle slot and make it current.
        Raises BundleRefused (the current slot is untouched), StoreCorrupt, OSError."""
        pointer = self._read_pointer()
        slot: Slot = "a" if pointer is None else _OTHER[pointer.slot]
        slot_dir = self._slot_dir(slot)
        self._wipe(slot_dir)
        try:
            with Path(bundle_path).open("rb") as raw:
                stream = _DigestingReader(raw)
                manifest = verify_bundle(
                    stream,
                    trust,
                    now,
                    installed_version=self.installed_version,
                    profile=profile,
                    sink=DirectorySink(slot_dir / "files"),
                    max_bundle_bytes=max_bundle_bytes,
                    clock_skew=clock_skew,
                )
                # tar padding after the last member is part of the digest the controller sent
                digest = stream.finish(max_bundle_bytes)
            record = SlotRecord(
                slot=slot, digest=digest, name=manifest.name, version=manifest.version
            )
            write_atomic(slot_dir / "manifest.json", manifest.canonical_bytes())
            write_atomic(slot_dir / "install.json", _record_bytes(record))
            for folder, _, _ in os.walk(slot_dir):
                fsync_dir(Path(folder))
        except BaseException:
            self._wipe(slot_dir)
            raise
        # floor before pointer: a crash in between leaves the floor high, never low
        self._raise_floor(manifest.name, manifest.version)
        write_atomic(self.root / "current", _record_bytes(record))
        return InstalledBundle(slot_dir=slot_dir, digest=digest, manifest=manifest)

    def current(self) -> InstalledBundle | None:
        """The live bundle, or None before the first install. Raises StoreCorrupt, OSError."""
        pointer = self._read_pointer()
        if pointer is None:
            return None
        bundle = self._load_slot(pointer.slot, check_files=False)
        if bundle is None or bundle.digest != pointer.digest:
            raise StoreCorrupt(f"slot {pointer.slot} does not hold bundle {pointer.digest}")
        return bundle

    def installed_version(self, name: str) -> int | None:
        """The highest version of `name` ever installed here (rollback() does not lower it).
        Raises StoreCorrupt, OSError."""
        return self._read_floors().get(name)

    def rollback(self) -> InstalledBundle | None:
        """Switch to the other slot if its files still match its manifest; None if not.
        Raises OSError."""
        pointer = self._read_pointer()
        if pointer is None:
            return None
        slot = _OTHER[pointer.slot]
        bundle = self._load_slot(slot, check_files=True)
        if bundle is None:
            return None
        record = SlotRecord(
            slot=slot,
            digest=bundle.digest,
            name=bundle.manifest.name,
            version=bundle.manifest.version,
        )
        write_atomic(self.root / "current", _record_bytes(record))
        return bundle

    def _slot_dir(self, slot: Slot) -> Path:
        return self.root / "slots" / slot

    def _wipe(self, slot_dir: Path) -> None:
        shutil.rmtree(slot_dir, ignore_errors=True)
        slot_dir.mkdir(parents=True)
        fsync_dir(slot_dir.parent)

    def _read_pointer(self) -> SlotRecord | None:
        try:
            data = (self.root / "current").read_bytes()
        except FileNotFoundError:
            return None
        try:
            return SlotRecord.model_validate_json(data)
        except ValidationError as exc:
            raise StoreCorrupt(f"unreadable current pointer: {exc}") from exc

    def _load_slot(self, slot: Slot, *, check_files: bool) -> InstalledBundle | None:
        slot_dir = self._slot_dir(slot)
        try:
            record = SlotRecord.model_validate_json((slot_dir / "install.json").read_bytes())
            manifest = Manifest.model_validate_json((slot_dir / "manifest.json").read_bytes())
        except (OSError, ValidationError):
            return None
        if (record.slot, record.name, record.version) != (slot, manifest.name, manifest.version):
            return None
        bundle = InstalledBundle(slot_dir=slot_dir, digest=record.digest, manifest=manifest)
        if check_files and not _files_intact(bundle):
            return None
        return bundle

    def _read_floors(self) -> dict[str, int]:
        try:
            return _FLOORS.validate_json((self.root / "versions.json").read_bytes())
        except FileNotFoundError:
            return {}
        except ValidationError as exc:
            raise StoreCorrupt(f"unreadable versions.json: {exc}") from exc

    def _raise_floor(self, name: str, version: int) -> None:
        floors = self._read_floors()
        if floors.get(name, 0) < version:
            floors[name] = version
            write_atomic(self.root / "versions.json", canonical_json(floors))


def _files_intact(bundle: InstalledBundle) -> bool:
    for entry in bundle.manifest.all_files().values():
        digest = hashlib.sha256()
        try:
            with bundle.path_of(entry.path).open("rb") as f:
                while chunk := f.read(_CHUNK):
                    digest.update(chunk)
                    if f.tell() > entry.size:
                        return False
        except OSError:
            return False
        if digest.hexdigest() != entry.sha256:
            return False
    return True


def _record_bytes(record: SlotRecord) -> bytes:
    return canonical_json(record.model_dump(mode="json"))


class _DigestingReader:
    """Hashes every byte the verifier reads, then the rest of the file."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._hash = hashlib.sha256()
        self._count = 0

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self._hash.update(data)
        self._count += len(data)
        return data

    def finish(self, cap: int) -> str:
        """Hash what the tar reader left unread and return the file's sha256.
        Raises BundleRefused (too_large)."""
        while self.read(_CHUNK):
            if self._count > cap:
                raise BundleRefused(RefusalReason.TOO_LARGE, f"bundle exceeds {cap} bytes")
        return self._hash.hexdigest()
