"""Install verified bundles into A/B slots and switch between them atomically (device side).

Layout under `root`: `slots/a`, `slots/b` (each `files/…`, `manifest.json`, `install.json`),
`current` (which slot is live, and whether it is still on probation), `versions.json` (the
anti-rollback floor per bundle name) and `release_floor.json` (the floor across names: the
highest manifest `release` ever committed; nothing below it is installed or rolled back to).
One process owns a store at a time.

A fresh install is current in state `probation`; the agent counts each start of it
(`begin_attempt`) and calls `commit` once it proved healthy. While a bundle is on probation the
other slot keeps the last committed one, and a further install replaces the probation bundle
rather than that fallback.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, BinaryIO, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from ota.atomic import fsync_dir, write_atomic
from ota.canonical import canonical_json
from ota.errors import BundleRefused
from ota.manifest import Manifest
from ota.trust import TrustStore
from ota.unpack import DirectorySink
from ota.verify import DEFAULT_CLOCK_SKEW, DEFAULT_MAX_BUNDLE_BYTES, verify_bundle
from protocol.events import RefusalReason

Slot = Literal["a", "b"]
PointerState = Literal["probation", "committed"]
# called with "unpack" after each file lands in the slot and "switch" just before the pointer
# moves; the agent's fault injection hooks in here
StageHook = Callable[[str], None]
_OTHER: dict[Slot, Slot] = {"a": "b", "b": "a"}
_FLOORS = TypeAdapter(dict[str, int])
_RELEASE_FLOOR = "release_floor.json"
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


class Pointer(SlotRecord):
    """The `current` pointer: a slot record plus its probation state and start count."""

    state: PointerState = "committed"
    attempts: Annotated[int, Field(ge=0)] = 0


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


class SlotStore:
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
        on_stage: StageHook | None = None,
    ) -> InstalledBundle:
        """Verify `bundle_path` into the idle slot and make it current, on probation.
        Raises BundleRefused (the current slot is untouched), StoreCorrupt, OSError."""
        slot = self._target_slot()
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
                    sink=_StagedSink(slot_dir / "files", on_stage),
                    max_bundle_bytes=max_bundle_bytes,
                    clock_skew=clock_skew,
                )
                # tar padding after the last member is part of the digest the controller sent
                digest = stream.finish(max_bundle_bytes)
            self._check_release(manifest)
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
        if on_stage is not None:
            on_stage("switch")
        self._write_pointer(Pointer(**record.model_dump(), state="probation"))
        return InstalledBundle(slot_dir=slot_dir, digest=digest, manifest=manifest)

    def pointer(self) -> Pointer | None:
        """The `current` pointer as stored, or None before the first install.
        Raises StoreCorrupt, OSError."""
        return self._read_pointer()

    def begin_attempt(self) -> int:
        """Count one more start of the bundle on probation, durably; returns the count.
        Raises StoreCorrupt (no bundle on probation), OSError."""
        pointer = self._read_pointer()
        if pointer is None or pointer.state != "probation":
            raise StoreCorrupt("no bundle is on probation")
        attempts = pointer.attempts + 1
        self._write_pointer(pointer.model_copy(update={"attempts": attempts}))
        return attempts

    def commit(self, digest: str) -> None:
        """Mark the bundle on probation as proven. Raises StoreCorrupt (it is not current,
        or not on probation), OSError."""
        pointer = self._read_pointer()
        if pointer is None or pointer.digest != digest:
            raise StoreCorrupt(f"bundle {digest[:12]} is not current")
        bundle = self._load_slot(pointer.slot, check_files=False)
        if bundle is not None:
            # raised only once proven: a probation that fails falls back to the bundle before
            self._raise_release_floor(bundle.manifest.release)
        if pointer.state != "committed":
            self._write_pointer(pointer.model_copy(update={"state": "committed"}))

    def clear(self) -> None:
        """Forget the current bundle (nothing to fall back to); the slots stay. Raises OSError."""
        (self.root / "current").unlink(missing_ok=True)
        fsync_dir(self.root)

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

    def release_floor(self) -> int:
        """The highest manifest `release` committed here; 0 before any. Raises StoreCorrupt,
        OSError."""
        try:
            data = (self.root / _RELEASE_FLOOR).read_bytes()
        except FileNotFoundError:
            return 0
        try:
            return _FLOORS.validate_json(data)["release"]
        except (ValidationError, KeyError) as exc:
            raise StoreCorrupt(f"unreadable {_RELEASE_FLOOR}: {exc}") from exc

    def rollback_refusal(self) -> str | None:
        """Why the previous slot must not be rolled back to (its release is below the floor),
        or None. Raises StoreCorrupt, OSError."""
        pointer = self._read_pointer()
        if pointer is None:
            return None
        bundle = self._load_slot(_OTHER[pointer.slot], check_files=False)
        floor = self.release_floor()
        if bundle is None or bundle.manifest.release >= floor:
            return None
        return (
            f"{bundle.manifest.name} {bundle.manifest.version} has release "
            f"{bundle.manifest.release}, below this device's floor {floor}"
        )

    def rollback(self) -> InstalledBundle | None:
        """Switch to the other slot if its files still match its manifest and its release is
        not below the floor; None if not. Raises StoreCorrupt, OSError."""
        pointer = self._read_pointer()
        if pointer is None:
            return None
        slot = _OTHER[pointer.slot]
        bundle = self._load_slot(slot, check_files=True)
        if bundle is None or bundle.manifest.release < self.release_floor():
            return None
        # what the agent falls back to is the bundle that ran before: no probation again
        self._write_pointer(_pointer_to(bundle))
        return bundle

    def _target_slot(self) -> Slot:
        """The slot a new install goes to; never the one holding the last committed bundle."""
        pointer = self._read_pointer()
        if pointer is None:
            return "a"
        if pointer.state == "committed":
            return _OTHER[pointer.slot]
        fallback = self._load_slot(_OTHER[pointer.slot], check_files=False)
        if fallback is None:
            return _OTHER[pointer.slot]  # nothing committed to keep: the idle slot is free
        # the fallback is in the other slot: point back at it before the probation slot is
        # wiped, so a crash or a refusal from here on leaves the fallback current
        self._write_pointer(_pointer_to(fallback))
        return pointer.slot

    def _write_pointer(self, pointer: Pointer) -> None:
        write_atomic(self.root / "current", canonical_json(pointer.model_dump(mode="json")))

    def _slot_dir(self, slot: Slot) -> Path:
        return self.root / "slots" / slot

    def _wipe(self, slot_dir: Path) -> None:
        shutil.rmtree(slot_dir, ignore_errors=True)
        slot_dir.mkdir(parents=True)
        fsync_dir(slot_dir.parent)

    def _read_pointer(self) -> Pointer | None:
        try:
            data = (self.root / "current").read_bytes()
        except FileNotFoundError:
            return None
        try:
            # a pointer written before probation existed has no state: it was committed
            return Pointer.model_validate_json(data)
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

    def _check_release(self, manifest: Manifest) -> None:
        floor = self.release_floor()
        if manifest.release < floor:
            raise BundleRefused(
                RefusalReason.ROLLBACK,
                f"{manifest.name} release {manifest.release} < this device's floor {floor}",
            )

    def _raise_release_floor(self, release: int) -> None:
        if release > self.release_floor():
            write_atomic(self.root / _RELEASE_FLOOR, canonical_json({"release": release}))

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


def _pointer_to(bundle: InstalledBundle) -> Pointer:
    slot: Slot = "a" if bundle.slot_dir.name == "a" else "b"
    return Pointer(
        slot=slot,
        digest=bundle.digest,
        name=bundle.manifest.name,
        version=bundle.manifest.version,
        state="committed",
    )


class _StagedSink(DirectorySink):
    """A DirectorySink that reports each file it made final to the install's stage hook."""

    def __init__(self, dest_dir: Path, on_stage: StageHook | None) -> None:
        super().__init__(dest_dir)
        self._on_stage = on_stage

    def commit(self, path: str) -> None:
        super().commit(path)
        if self._on_stage is not None:
            self._on_stage("unpack")


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
