"""Deployment on the device: receive a bundle's chunks, verify, install, activate, report.

Runs on the agent's control thread only, so it needs no locks of its own. Every step is
reported as an event with the bundle digest, so a deployment is never a black box. Offers in
flight are written beside their chunks (`agent.deploy.pending`) and resumed after a restart; a
download that stops making progress is asked for again with backoff, then given up as
`stalled`. Install, probation and revert are the injected `Installer`'s job.

An offer is refused before a byte is fetched or stored when it does not add up, announces more
than the largest bundle setting or the free disk, or names a URL outside the controller's
origin. When the offer lists each chunk's sha256, a chunk that does not match is dropped alone
and asked for again, so forged frames on the bundle topic cannot fail the deployment.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agent.deploy.faults import FaultPoint, no_fault
from agent.deploy.http_download import DownloadUpdate, HttpDownloads
from agent.deploy.installer import Installer
from agent.deploy.pending import PendingOffer, drop_pending, load_pending, save_pending
from agent.link.events import DeploymentRef, EventReporter
from agent.link.origin import ControllerOrigin, ForeignOrigin
from ota.install import InstalledBundle, SlotStore, StoreCorrupt
from ota.transfer import BadChunk, ChunkAssembler, Offer, TransferError
from protocol.codec import Chunk
from protocol.events import EventKind, EventLevel, RefusalReason, TransferReason
from protocol.messages import BundleOffer, ChunkRange, Deploy

log = logging.getLogger(__name__)

DEFAULT_MAX_BUNDLE_BYTES = 2 << 30
# a dropped chunk is asked for again at most this often per transfer, so a flood of forged
# chunks cannot turn the device into a flood of chunk requests
REREQUEST_INTERVAL_S = 0.5


def free_bytes(path: Path) -> int:
    """Free space on the file system that holds `path` (or its nearest existing parent)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


@dataclass
class _Transfer:
    assembler: ChunkAssembler
    cmd_id: str
    name: str
    version: int
    started: float = field(default_factory=time.monotonic)
    last_progress: float = field(default_factory=time.monotonic)
    requests: int = 0
    saved_tenths: int = -1
    reported_steps: int = -1
    dropped: set[int] = field(default_factory=set)
    last_rerequest: float = 0.0

    @property
    def ref(self) -> DeploymentRef:
        return DeploymentRef(self.assembler.offer.digest, self.cmd_id)


class DeviceDeployer:
    """Drives bundles from offer to running (or to a reported failure)."""

    def __init__(
        self,
        *,
        store: SlotStore,
        installer: Installer,
        downloads: Path,
        subscribe: Callable[[str], None],
        unsubscribe: Callable[[str], None],
        events: EventReporter,
        request_timeout: float = 5.0,
        max_requests: int = 8,
        fault: FaultPoint = no_fault,
        origin: ControllerOrigin | None = None,
        max_bundle_bytes: int = DEFAULT_MAX_BUNDLE_BYTES,
        disk_free: Callable[[Path], int] = free_bytes,
    ) -> None:
        self.store = store
        self.installer = installer
        self.downloads = downloads
        self._subscribe = subscribe
        self._unsubscribe = unsubscribe
        self._events = events
        self.request_timeout = request_timeout
        self.max_requests = max_requests
        self._fault = fault
        self._transfers: dict[str, _Transfer] = {}
        self.origin = origin or ControllerOrigin(fallback_host="127.0.0.1")
        self.max_bundle_bytes = max_bundle_bytes
        self._disk_free = disk_free
        self.http = HttpDownloads(downloads, origin=self.origin)
        self.chunks_dropped = 0
        self.offers_refused = 0

    def on_deploy(self, command: Deploy) -> None:
        self._fault("offer")
        offer = command.bundle
        ref = DeploymentRef(offer.digest, command.id)
        current = self._current()
        if current is not None and current.digest == offer.digest:
            trial = self.installer.probation
            if trial is not None and trial.installed.digest == offer.digest:
                # this deployment ends with the trial: running, or failed and rolled back
                trial.follow(ref)
                self._events.report(EventKind.PROBATION, ref, message="on trial")
            else:
                self._events.report(EventKind.RUNNING, ref, message="already running")
            return
        fresh = offer.digest not in self._transfers and not self.http.active(offer.digest)
        if fresh and not self._offer_acceptable(offer, ref):
            return
        if (offer.url or self.http.active(offer.digest)) and offer.digest not in self._transfers:
            self._deploy_over_http(command)
            return
        if offer.digest in self._transfers:
            self._transfers[offer.digest].cmd_id = command.id
            self._request_missing(offer.digest)
            return
        try:
            assembler = ChunkAssembler(
                self.downloads,
                Offer(
                    offer.digest, offer.size, offer.chunk_size, offer.chunks, offer.chunk_digests
                ),
            )
        except TransferError as exc:
            self._events.report(
                EventKind.FAILED,
                ref,
                reason=TransferReason.BAD_OFFER,
                level=EventLevel.ERROR,
                message=str(exc),
            )
            return
        pending = PendingOffer(
            digest=offer.digest,
            size=offer.size,
            chunk_size=offer.chunk_size,
            chunks=offer.chunks,
            cmd_id=command.id,
            name=offer.name,
            version=offer.version,
            chunk_digests=offer.chunk_digests,
        )
        save_pending(self.downloads, pending)
        self._events.report(
            EventKind.DEPLOY_OFFERED,
            ref,
            message=f"{offer.name}@{offer.version}, {offer.size} bytes",
        )
        self._start_transfer(pending, assembler)

    def resume(self) -> None:
        """Take up the downloads a previous run left unfinished; call once the session is up."""
        current = self._current()
        for pending in load_pending(self.downloads):
            if pending.digest in self._transfers:
                continue
            if current is not None and current.digest == pending.digest:
                self._forget_download(pending.digest)  # installed; we stopped before cleanup
                continue
            if pending.url is not None:
                self._resume_over_http(pending)
                continue
            try:
                assembler = ChunkAssembler(
                    self.downloads,
                    Offer(
                        pending.digest,
                        pending.size,
                        pending.chunk_size,
                        pending.chunks,
                        pending.chunk_digests,
                    ),
                )
            except TransferError:
                drop_pending(self.downloads, pending.digest)
                continue
            self._events.report(
                EventKind.DOWNLOADING,
                DeploymentRef(pending.digest, pending.cmd_id),
                progress=assembler.received / pending.chunks,
                message=f"resumed with {assembler.received} of {pending.chunks} chunks on disk",
            )
            self._start_transfer(pending, assembler)

    def _start_transfer(self, pending: PendingOffer, assembler: ChunkAssembler) -> None:
        digest = pending.digest
        transfer = _Transfer(assembler, pending.cmd_id, pending.name, pending.version)
        self._transfers[digest] = transfer
        if assembler.final_path.exists() or assembler.complete:
            self._finish(digest)
            return
        self._subscribe(digest)
        self._request_missing(digest)

    def on_chunk(self, digest: str, chunk: Chunk) -> None:
        transfer = self._transfers.get(digest)
        if transfer is None:
            return  # another device's rollout wave, or a transfer we already finished
        try:
            added = transfer.assembler.add(chunk.index, chunk.total, chunk.data)
        except BadChunk as exc:
            # forged or damaged: dropped alone, and asked for again from the controller
            self.chunks_dropped += 1
            if not transfer.dropped:  # once per batch: a flood must not flood the log too
                log.warning("event=chunk_dropped bundle=%s error=%r", digest[:12], str(exc))
            transfer.dropped.add(chunk.index)
            self._rerequest_dropped(transfer)
            return
        except TransferError as exc:
            log.warning("event=chunk_refused bundle=%s error=%r", digest[:12], str(exc))
            return
        if not added:
            return
        self._fault("download")
        transfer.last_progress = time.monotonic()
        transfer.requests = 0  # attempts count only requests that brought nothing
        offer = transfer.assembler.offer
        received = transfer.assembler.received
        tenths = received * 10 // offer.chunks
        if tenths != transfer.saved_tenths:
            transfer.saved_tenths = tenths
            transfer.assembler.save_progress()
        steps = received // offer.progress_step
        if steps != transfer.reported_steps:
            # finer than the saves: the controller paces its chunk passes by these
            transfer.reported_steps = steps
            self._events.report(
                EventKind.DOWNLOADING,
                transfer.ref,
                progress=transfer.assembler.received / offer.chunks,
            )
        if transfer.assembler.complete:
            self._finish(digest)

    def tick(self) -> None:
        """Judge a probation; ask again, with backoff, for chunks of stalled transfers."""
        for update in self.http.poll():
            self._on_http_update(update)
        self.installer.tick()
        now = time.monotonic()
        for digest, transfer in list(self._transfers.items()):
            self._rerequest_dropped(transfer)
            waited = now - transfer.last_progress
            if waited < self.request_timeout * min(8, 2 ** max(0, transfer.requests - 1)):
                continue
            transfer.assembler.save_progress()
            if transfer.requests >= self.max_requests:
                self._give_up(digest, waited)
                continue
            self._events.report(
                EventKind.DOWNLOADING,
                transfer.ref,
                progress=transfer.assembler.received / transfer.assembler.offer.chunks,
                reason=TransferReason.STALLED,
                level=EventLevel.WARNING,
                message=f"no chunk for {waited:.1f} s, asking again "
                f"({transfer.requests + 1} of {self.max_requests})",
            )
            self._request_missing(digest)

    def _offer_acceptable(self, offer: BundleOffer, ref: DeploymentRef) -> bool:
        """Refuse, before a byte is fetched or stored, an offer this device must not take."""
        problem: tuple[TransferReason, str] | None = None
        try:
            Offer(offer.digest, offer.size, offer.chunk_size, offer.chunks, offer.chunk_digests)
        except TransferError as exc:
            problem = (TransferReason.BAD_OFFER, str(exc))
        if problem is None and offer.size > self.max_bundle_bytes:
            problem = (
                TransferReason.OFFER_TOO_LARGE,
                f"{offer.size} bytes offered, this device takes at most {self.max_bundle_bytes}",
            )
        if problem is None and offer.url is not None:
            try:
                self.origin.check(offer.url)
            except ForeignOrigin as exc:
                problem = (TransferReason.FOREIGN_ORIGIN, f"bundle URL refused: {exc}")
        if problem is None:
            free = self._disk_free(self.downloads)
            if offer.size > free:
                problem = (
                    TransferReason.NO_DISK_SPACE,
                    f"{offer.size} bytes offered, {free} bytes free",
                )
        if problem is None:
            return True
        self.offers_refused += 1
        reason, message = problem
        log.warning("event=offer_refused bundle=%s reason=%s", offer.digest[:12], reason)
        self._events.report(
            EventKind.FAILED, ref, reason=reason, level=EventLevel.ERROR, message=message
        )
        return False

    def _rerequest_dropped(self, transfer: _Transfer) -> None:
        """Ask again for dropped chunks still missing, at most once per interval."""
        now = time.monotonic()
        if not transfer.dropped or now - transfer.last_rerequest < REREQUEST_INTERVAL_S:
            return
        wanted = sorted(i for i in transfer.dropped if not transfer.assembler.has(i))
        transfer.dropped.clear()
        if not wanted:
            return
        transfer.last_rerequest = now
        self._events.report(
            EventKind.CHUNK_REQUEST,
            transfer.ref,
            missing=tuple(ChunkRange(start=i, end=i) for i in wanted[:256]),
            message=f"{len(wanted)} dropped chunks",
        )

    def _give_up(self, digest: str, waited: float) -> None:
        transfer = self._transfers.pop(digest)
        self._unsubscribe(digest)
        # the chunks stay on disk: a later offer of the same bundle starts from them
        drop_pending(self.downloads, digest)
        self._events.report(
            EventKind.FAILED,
            transfer.ref,
            reason=TransferReason.STALLED,
            level=EventLevel.ERROR,
            message=f"{transfer.assembler.received} of {transfer.assembler.offer.chunks} chunks; "
            f"{transfer.requests} requests brought nothing for {waited:.1f} s",
        )

    def _deploy_over_http(self, command: Deploy) -> None:
        offer = command.bundle
        if self.http.active(offer.digest):
            self.http.start(offer, command.id)  # its updates now carry this command's id
            return
        # remembered before anything starts, so a restart takes the download up again
        save_pending(
            self.downloads,
            PendingOffer(
                digest=offer.digest,
                size=offer.size,
                chunk_size=offer.chunk_size,
                chunks=offer.chunks,
                cmd_id=command.id,
                name=offer.name,
                version=offer.version,
                url=offer.url,
            ),
        )
        self.http.start(offer, command.id)
        self._events.report(
            EventKind.DEPLOY_OFFERED,
            DeploymentRef(offer.digest, command.id),
            message=f"{offer.name}@{offer.version}, {offer.size} bytes over HTTP",
        )

    def _resume_over_http(self, pending: PendingOffer) -> None:
        offer = BundleOffer(
            name=pending.name,
            version=pending.version,
            digest=pending.digest,
            size=pending.size,
            chunk_size=pending.chunk_size,
            chunks=pending.chunks,
            url=pending.url,
        )
        try:
            started = self.http.start(offer, pending.cmd_id)
        except ValueError as exc:  # the origin setting changed since: not resumed
            log.warning(
                "event=download_not_resumed bundle=%s error=%r", pending.digest[:12], str(exc)
            )
            drop_pending(self.downloads, pending.digest)
            return
        if started:
            self._events.report(
                EventKind.DOWNLOADING,
                DeploymentRef(pending.digest, pending.cmd_id),
                message="resumed over HTTP",
            )

    def _on_http_update(self, update: DownloadUpdate) -> None:
        """Report an HTTP download's progress; a finished file goes through `install`."""
        ref = DeploymentRef(update.digest, update.cmd_id or None)
        if update.kind == "progress":
            self._events.report(EventKind.DOWNLOADING, ref, progress=update.progress)
        elif update.kind == "retrying":
            self._events.report(
                EventKind.DOWNLOADING,
                ref,
                reason=update.reason,
                level=EventLevel.WARNING,
                message=update.message,
            )
        elif update.kind == "failed":
            # given up: a later offer starts again from the .part file, a restart does not
            drop_pending(self.downloads, update.digest)
            self._events.report(
                EventKind.FAILED,
                ref,
                reason=update.reason,
                level=EventLevel.ERROR,
                message=update.message,
            )
        elif update.path is not None:
            try:
                staged = self.installer.stage(update.path, ref)
            finally:
                # as for MQTT: a bundle that crashes in probation must not be re-installed
                # from a leftover download at the next start
                update.path.unlink(missing_ok=True)
                self._forget_download(update.digest)
            if staged is not None:
                self.installer.begin(*staged)

    def _request_missing(self, digest: str) -> None:
        transfer = self._transfers[digest]
        transfer.requests += 1
        transfer.last_progress = time.monotonic()
        missing = tuple(ChunkRange(start=a, end=b) for a, b in transfer.assembler.missing_ranges())
        if missing:
            self._events.report(
                EventKind.CHUNK_REQUEST,
                transfer.ref,
                missing=missing,
                message=f"attempt {transfer.requests}",
            )

    def _finish(self, digest: str) -> None:
        transfer = self._transfers.pop(digest)
        self._unsubscribe(digest)
        ref = transfer.ref
        try:
            path = transfer.assembler.finish()
        except TransferError as exc:
            drop_pending(self.downloads, digest)
            self._events.report(
                EventKind.FAILED,
                ref,
                reason=RefusalReason.HASH_MISMATCH,
                level=EventLevel.ERROR,
                message=str(exc),
            )
            return
        try:
            staged = self.installer.stage(path, ref)
        finally:
            # in the slot or refused: either way the download is done, and is not resumed if
            # the probation below crashes the agent
            self._forget_download(digest)
        if staged is not None:
            self.installer.begin(*staged)

    def _forget_download(self, digest: str) -> None:
        (self.downloads / f"{digest}.bundle").unlink(missing_ok=True)
        drop_pending(self.downloads, digest)

    def install(self, path: Path, *, digest: str | None = None, cmd_id: str | None = None) -> bool:
        """Verify and install a complete bundle file, then activate it; False on failure."""
        return self.installer.install(path, digest=digest, cmd_id=cmd_id)

    def restore(self) -> None:
        """At agent start: load the installed bundle (counting a probation attempt)."""
        self.installer.restore()

    def rollback(self, cmd_id: str | None = None) -> bool:
        """Switch back to the previous slot on request; False if there is none that is intact."""
        return self.installer.rollback(cmd_id)

    def _current(self) -> InstalledBundle | None:
        try:
            return self.store.current()
        except (StoreCorrupt, OSError):
            log.exception("event=store_unreadable")
            return None
