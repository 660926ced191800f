"""Unpack a bundle into a folder while it is verified, so no unverified byte looks final."""

from __future__ import annotations

import contextlib
import os
import tempfile
from datetime import datetime, timedelta
from pathlib import Path
from typing import BinaryIO

from ota.atomic import fsync_dir
from ota.manifest import FileEntry, Manifest
from ota.trust import TrustStore
from ota.verify import (
    DEFAULT_CLOCK_SKEW,
    DEFAULT_MAX_BUNDLE_BYTES,
    VersionFloor,
    verify_bundle,
)


class DirectorySink:
    """A FileSink writing each file under a temp name, renamed once its digest matched."""

    def __init__(self, dest_dir: Path) -> None:
        self.dest_dir = Path(dest_dir)
        self.dest_dir.mkdir(parents=True, exist_ok=True)
        self._open: dict[str, tuple[Path, BinaryIO]] = {}
        self._committed: list[Path] = []
        self._made_dirs: list[Path] = []

    def open(self, path: str) -> BinaryIO:
        """Start a temp file for bundle file `path`. Raises ValueError (unsafe path,
        already open), FileExistsError, OSError."""
        # the verifier already checked `path`; checked again because this writes to disk
        FileEntry(path=path, sha256="0" * 64, size=0)
        if path in self._open:
            raise ValueError(f"{path} is already being written")
        target = self.dest_dir / path
        if target.exists() or target.is_symlink():
            raise FileExistsError(f"{target} already exists")
        self._make_parents(target.parent)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
        out = os.fdopen(fd, "wb")
        self._open[path] = (Path(tmp), out)
        return out

    def commit(self, path: str) -> None:
        """Make `path` visible under its own name, durably. Raises KeyError, OSError."""
        tmp, out = self._open.pop(path)
        target = self.dest_dir / path
        try:
            out.flush()
            os.fsync(out.fileno())
            out.close()
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        except BaseException:
            out.close()
            tmp.unlink(missing_ok=True)
            raise
        self._committed.append(target)
        fsync_dir(target.parent)

    def discard(self) -> None:
        """Remove every temp file, committed file and folder this sink made; idempotent."""
        for tmp, out in self._open.values():
            out.close()
            tmp.unlink(missing_ok=True)
        self._open.clear()
        for target in self._committed:
            target.unlink(missing_ok=True)
        self._committed.clear()
        # deepest first, so each folder is empty by the time it is removed
        for folder in sorted(self._made_dirs, key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                folder.rmdir()
        self._made_dirs.clear()

    @property
    def committed(self) -> list[Path]:
        return list(self._committed)

    def _make_parents(self, folder: Path) -> None:
        missing: list[Path] = []
        while not folder.exists() and folder != self.dest_dir:
            missing.append(folder)
            folder = folder.parent
        for new in reversed(missing):
            new.mkdir()
            self._made_dirs.append(new)


def verify_bundle_file(
    path: Path,
    trust: TrustStore,
    now: datetime,
    *,
    installed_version: VersionFloor = None,
    profile: str | None = None,
    dest_dir: Path | None = None,
    max_bundle_bytes: int = DEFAULT_MAX_BUNDLE_BYTES,
    clock_skew: timedelta = DEFAULT_CLOCK_SKEW,
) -> Manifest:
    """Verify the bundle at `path`, unpacking its files into `dest_dir` if given.
    Raises BundleRefused, OSError."""
    sink = DirectorySink(dest_dir) if dest_dir is not None else None
    with Path(path).open("rb") as stream:
        return verify_bundle(
            stream,
            trust,
            now,
            installed_version=installed_version,
            profile=profile,
            sink=sink,
            max_bundle_bytes=max_bundle_bytes,
            clock_skew=clock_skew,
        )
