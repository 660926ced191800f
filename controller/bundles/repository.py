"""The bundle store: uploaded bundle files, verified with `ota`, kept by digest."""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Table, select
from sqlalchemy.orm import Session, sessionmaker

from controller.db import Bundle
from controller.mqtt.records import idempotent_insert
from ota.digest import file_digest
from ota.manifest import Manifest
from ota.trust_file import load_trust_store
from ota.verify import verify_bundle
from protocol.messages import BundleOffer

log = logging.getLogger(__name__)

BundleVerifier = Callable[[Path], Manifest]
"""Checks a bundle file and returns its manifest; raises ota.errors.BundleRefused."""


class UnknownBundle(LookupError):
    """No stored bundle has that digest."""


class TrustStoreUnavailable(RuntimeError):
    """The controller has no usable release trust store, so it cannot accept bundles."""


def release_verifier(
    trust_path: Path, max_bytes: int, now: Callable[[], datetime] | None = None
) -> BundleVerifier:
    """A verifier that checks bundles with `ota` against the trust store file at trust_path.

    The store is read on every upload, so installing or rotating it needs no restart.
    """
    clock = now or (lambda: datetime.now(timezone.utc))

    def verify(path: Path) -> Manifest:
        try:
            trust = load_trust_store(trust_path)
        except (OSError, ValueError) as exc:
            raise TrustStoreUnavailable(f"no usable trust store at {trust_path}: {exc}") from exc
        with path.open("rb") as stream:
            return verify_bundle(stream, trust, clock(), max_bundle_bytes=max_bytes)

    return verify


@dataclass(frozen=True)
class BundleInfo:
    digest: str
    name: str
    version: int
    size: int
    chunk_size: int
    created: float
    manifest: dict[str, Any]

    @property
    def chunks(self) -> int:
        return -(-self.size // self.chunk_size)

    def offer(self, url: str | None = None) -> BundleOffer:
        """The Deploy command's description of this bundle; raises ValidationError on a bad url."""
        return BundleOffer(
            name=self.name,
            version=self.version,
            digest=self.digest,
            size=self.size,
            chunk_size=self.chunk_size,
            chunks=self.chunks,
            url=url,
        )

    @classmethod
    def of(cls, row: Bundle) -> BundleInfo:
        return cls(
            row.digest, row.name, row.version, row.size, row.chunk_size, row.created, row.manifest
        )


class BundleRepository:
    """Verified bundle files under `root` as `<digest>.bundle`, recorded in the database."""

    def __init__(
        self,
        root: Path,
        sessions: sessionmaker[Session],
        verify: BundleVerifier,
        chunk_size: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = root
        self.incoming = root / "incoming"
        self.incoming.mkdir(parents=True, exist_ok=True)
        self.sessions = sessions
        self.verify = verify
        self.chunk_size = chunk_size
        self._clock = clock

    def new_upload(self) -> Path:
        """A fresh path inside the store's folder for an upload to be written to."""
        return self.incoming / f"{uuid.uuid4().hex}.upload"

    def add_file(self, path: Path, *, move: bool = False) -> BundleInfo:
        """Verify the bundle at `path` and store it; storing the same bundle twice is a no-op.

        Raises ota.errors.BundleRefused, TrustStoreUnavailable, OSError, UnknownBundle (gone
        again before it could be read back).
        """
        try:
            digest, size = file_digest(path)
            manifest = self.verify(path)
            final = self.path(digest)
            if not final.exists():
                staged = path if move else self.new_upload()
                if not move:
                    shutil.copyfile(path, staged)
                os.replace(staged, final)
        finally:
            if move:
                path.unlink(missing_ok=True)
        with self.sessions.begin() as session:
            # several replicas may store the same bundle at once: first one wins, same bytes
            session.execute(
                idempotent_insert(session, cast(Table, Bundle.__table__))
                .values(
                    digest=digest,
                    name=manifest.name,
                    version=manifest.version,
                    size=size,
                    chunk_size=self.chunk_size,
                    manifest=manifest.model_dump(mode="json"),
                    path=final.name,
                    created=self._clock(),
                )
                .on_conflict_do_nothing(index_elements=["digest"])
            )
        log.info(
            "event=bundle_stored digest=%s name=%s version=%d size=%d",
            digest[:12],
            manifest.name,
            manifest.version,
            size,
        )
        info = self.get(digest)
        if info is None:  # removed by another replica between the insert and this read
            raise UnknownBundle(digest)
        return info

    def list(self) -> list[BundleInfo]:
        with self.sessions() as session:
            rows = session.scalars(select(Bundle).order_by(Bundle.created.desc())).all()
            return [BundleInfo.of(row) for row in rows]

    def get(self, digest: str) -> BundleInfo | None:
        with self.sessions() as session:
            row = session.get(Bundle, digest)
            return BundleInfo.of(row) if row else None

    def path(self, digest: str) -> Path:
        if len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
            raise UnknownBundle(digest)
        return self.root / f"{digest}.bundle"

    def read_range(self, digest: str, offset: int, length: int) -> bytes:
        """Bytes `offset`..`offset+length` of a stored bundle; raises UnknownBundle, OSError."""
        try:
            with self.path(digest).open("rb") as src:
                src.seek(offset)
                return src.read(length)
        except FileNotFoundError:
            raise UnknownBundle(digest) from None
