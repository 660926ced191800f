"""Deployment on the device: receive a bundle's chunks, verify, install, activate, report.

Runs on the agent's control thread only, so it needs no locks of its own. Every step is
reported as an event with the bundle digest, so a deployment is never a black box.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from agent.loader import ModelLoadFailed
from ota.errors import BundleRefused
from ota.install import BundleStore, InstalledBundle
from ota.transfer import ChunkAssembler, Offer, TransferError
from ota.trust import TrustStore
from protocol.codec import Chunk
from protocol.messages import ChunkRange, Deploy

log = logging.getLogger(__name__)

EmitEvent = Callable[..., None]


@dataclass
class _Transfer:
    assembler: ChunkAssembler
    cmd_id: str
    name: str
    version: int
    started: float = field(default_factory=time.monotonic)
    last_progress: float = field(default_factory=time.monotonic)
    requests: int = 0
    reported_tenths: int = -1


class Deployer:
    """Drives bundles from offer to running (or to a reported failure)."""

    def __init__(
        self,
        *,
        store: BundleStore,
        downloads: Path,
        trust_file: Path,
        subscribe: Callable[[str], None],
        unsubscribe: Callable[[str], None],
        emit: EmitEvent,
        activate: Callable[[InstalledBundle], None],
        profile: str | None = None,
        request_timeout: float = 5.0,
        clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    ) -> None:
        self.store = store
        self.downloads = downloads
        self.trust_file = trust_file
        self._subscribe = subscribe
        self._unsubscribe = unsubscribe
        self._emit = emit
        self._activate = activate
        self.profile = profile
        self.request_timeout = request_timeout
        self._clock = clock
        self._transfers: dict[str, _Transfer] = {}

    def on_deploy(self, command: Deploy) -> None:
        offer = command.bundle
        current = self._current()
        if current is not None and current.digest == offer.digest:
            self._emit("running", bundle=offer.digest, cmd_id=command.id, message="already running")
            return
        if offer.digest in self._transfers:
            self._transfers[offer.digest].cmd_id = command.id
            self._request_missing(offer.digest)
            return
        try:
            assembler = ChunkAssembler(
                self.downloads,
                Offer(offer.digest, offer.size, offer.chunk_size, offer.chunks),
            )
        except TransferError as exc:
            self._emit(
                "failed",
                bundle=offer.digest,
                cmd_id=command.id,
                reason="bad_offer",
                message=str(exc),
                level="error",
            )
            return
        self._transfers[offer.digest] = _Transfer(assembler, command.id, offer.name, offer.version)
        self._emit(
            "deploy_offered",
            bundle=offer.digest,
            cmd_id=command.id,
            message=f"{offer.name}@{offer.version}, {offer.size} bytes",
        )
        if assembler.final_path.exists() or assembler.complete:
            self._finish(offer.digest)
            return
        self._subscribe(offer.digest)
        self._request_missing(offer.digest)

    def on_chunk(self, digest: str, chunk: Chunk) -> None:
        transfer = self._transfers.get(digest)
        if transfer is None:
            return  # another device's rollout wave, or a transfer we already finished
        try:
            added = transfer.assembler.add(chunk.index, chunk.total, chunk.data)
        except TransferError as exc:
            log.warning("event=chunk_refused bundle=%s error=%r", digest[:12], str(exc))
            return
        if not added:
            return
        transfer.last_progress = time.monotonic()
        offer = transfer.assembler.offer
        tenths = transfer.assembler.received * 10 // offer.chunks
        if tenths != transfer.reported_tenths:
            transfer.reported_tenths = tenths
            transfer.assembler.save_progress()
            self._emit(
                "downloading",
                bundle=digest,
                cmd_id=transfer.cmd_id,
                progress=transfer.assembler.received / offer.chunks,
            )
        if transfer.assembler.complete:
            self._finish(digest)

    def tick(self) -> None:
        """Ask again for chunks of transfers that made no progress for a while."""
        now = time.monotonic()
        for digest, transfer in list(self._transfers.items()):
            if now - transfer.last_progress >= self.request_timeout * min(8, 2**transfer.requests):
                transfer.assembler.save_progress()
                self._request_missing(digest)

    def _request_missing(self, digest: str) -> None:
        transfer = self._transfers[digest]
        transfer.requests += 1
        transfer.last_progress = time.monotonic()
        missing = tuple(ChunkRange(start=a, end=b) for a, b in transfer.assembler.missing_ranges())
        if missing:
            self._emit(
                "chunk_request",
                bundle=digest,
                cmd_id=transfer.cmd_id,
                missing=missing,
                message=f"attempt {transfer.requests}",
            )

    def _finish(self, digest: str) -> None:
        transfer = self._transfers.pop(digest)
        self._unsubscribe(digest)
        cmd_id = transfer.cmd_id
        try:
            path = transfer.assembler.finish()
        except TransferError as exc:
            self._emit(
                "failed",
                bundle=digest,
                cmd_id=cmd_id,
                reason="hash_mismatch",
                message=str(exc),
                level="error",
            )
            return
        try:
            self.install(path, digest=digest, cmd_id=cmd_id)
        finally:
            path.unlink(missing_ok=True)

    def install(self, path: Path, *, digest: str | None = None, cmd_id: str | None = None) -> bool:
        """Verify and install a complete bundle file, then activate it; False on failure."""
        fields: dict[str, Any] = {"bundle": digest, "cmd_id": cmd_id}
        try:
            trust = TrustStore.load(self.trust_file)
        except (OSError, ValueError) as exc:
            self._emit(
                "failed",
                reason="no_trust_store",
                level="error",
                message=f"cannot read trust store {self.trust_file}: {exc}",
                **fields,
            )
            return False
        self._emit("installing", **fields)
        try:
            installed = self.store.install(path, trust, self._clock(), self.profile)
        except BundleRefused as exc:
            log.warning("event=bundle_refused reason=%s detail=%r", exc.reason.value, exc.detail)
            self._emit(
                "failed", reason=exc.reason.value, message=exc.detail, level="error", **fields
            )
            return False
        fields["bundle"] = installed.digest
        self._emit(
            "verified", message=f"{installed.manifest.name}@{installed.manifest.version}", **fields
        )
        self._emit("probation", **fields)
        try:
            self._activate(installed)
        except ModelLoadFailed as exc:
            self._emit("failed", reason=exc.reason, message=exc.detail, level="error", **fields)
            self._revert(fields)
            return False
        self._emit(
            "running", message=f"{installed.manifest.name}@{installed.manifest.version}", **fields
        )
        return True

    def rollback(self, cmd_id: str | None = None) -> bool:
        """Switch back to the previous slot on request; False if there is none that is intact."""
        return self._revert({"cmd_id": cmd_id, "bundle": None})

    def _revert(self, fields: dict[str, Any]) -> bool:
        previous = self.store.rollback()
        if previous is None:
            self._emit(
                "error",
                reason="no_previous_bundle",
                level="warning",
                message="nothing intact to roll back to",
                **fields,
            )
            return False
        try:
            self._activate(previous)
        except ModelLoadFailed as exc:
            self._emit("error", reason=exc.reason, message=exc.detail, level="error", **fields)
            return False
        self._emit(
            "rolled_back",
            message=f"{previous.manifest.name}@{previous.manifest.version}",
            **{**fields, "bundle": previous.digest},
        )
        return True

    def _current(self) -> InstalledBundle | None:
        try:
            return self.store.current()
        except Exception:
            log.exception("event=store_unreadable")
            return None
