"""HTTP bundle downloads on background threads, reported back to the control thread.

The deployer runs on the agent's control thread and must not block on the network, so each
offered URL is fetched by `ota.http_fetch` on a thread of its own. The thread never touches the
deployer: it queues `DownloadUpdate`s, which the control thread collects with `poll()`.
httpx (through `ota.http_fetch`) loads with the first HTTP download, not with the agent.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from agent.link.origin import ControllerOrigin
from protocol.events import Reason, TransferReason
from protocol.messages import BundleOffer

if TYPE_CHECKING:
    import httpx

    from ota.http_fetch import FetchError, RetryPolicy, Wanted

log = logging.getLogger(__name__)

UpdateKind = Literal["progress", "retrying", "done", "failed"]


@dataclass(frozen=True)
class DownloadUpdate:
    """One thing that happened to a download, for the control thread to report or act on."""

    digest: str
    cmd_id: str
    kind: UpdateKind
    progress: float | None = None
    path: Path | None = None
    reason: Reason | None = None
    message: str = ""


@dataclass
class _Running:
    thread: threading.Thread
    cancel: threading.Event
    cmd_id: str


class HttpDownloads:
    """Runs at most one download per bundle digest; results come back through `poll()`."""

    def __init__(
        self,
        directory: Path,
        *,
        policy: RetryPolicy | None = None,
        client_factory: Callable[[], httpx.Client] | None = None,
        progress_steps: int = 10,
        origin: ControllerOrigin | None = None,
    ) -> None:
        self.directory = directory
        self.policy = policy  # None: ota.http_fetch's default, made on the first download
        self.origin = origin
        self._client_factory = client_factory or self._verified_client
        self._steps = max(1, progress_steps)
        self._updates: queue.SimpleQueue[DownloadUpdate] = queue.SimpleQueue()
        self._running: dict[str, _Running] = {}

    def active(self, digest: str) -> bool:
        running = self._running.get(digest)
        return running is not None and running.thread.is_alive()

    def start(self, offer: BundleOffer, cmd_id: str) -> bool:
        """Start fetching `offer.url`; False (and the newer cmd_id kept) if already running.

        Raises ValueError when the offer has no URL, ForeignOrigin (a ValueError) when it is
        outside the controller's origin.
        """
        if self.active(offer.digest):
            self._running[offer.digest].cmd_id = cmd_id
            return False
        if offer.url is None:
            raise ValueError(f"offer of {offer.digest[:12]} has no url")
        if self.origin is not None:
            self.origin.check(offer.url)  # the deployer refused foreign URLs; checked again here
        from ota.http_fetch import Wanted

        cancel = threading.Event()
        wanted = Wanted(offer.url, offer.digest, offer.size, offer.token)
        thread = threading.Thread(
            target=self._run,
            args=(wanted, cancel),
            name=f"http-download-{offer.digest[:8]}",
            daemon=True,  # a killed agent resumes the .part file on its next offer
        )
        self._running[offer.digest] = _Running(thread, cancel, cmd_id)
        thread.start()
        return True

    def _verified_client(self) -> httpx.Client:
        import httpx

        # no redirects: a redirect could lead away from the controller's origin
        verify = self.origin.verify() if self.origin is not None else True
        return httpx.Client(follow_redirects=False, verify=verify)

    def poll(self) -> list[DownloadUpdate]:
        """Updates queued since the last call, oldest first; finished downloads are forgotten."""
        updates: list[DownloadUpdate] = []
        while True:
            try:
                update = self._updates.get_nowait()
            except queue.Empty:
                break
            running = self._running.get(update.digest)
            # the cmd_id may have moved on to a repeated Deploy of the same bundle
            cmd_id = running.cmd_id if running is not None else update.cmd_id
            updates.append(
                DownloadUpdate(
                    update.digest,
                    cmd_id,
                    update.kind,
                    update.progress,
                    update.path,
                    update.reason,
                    update.message,
                )
            )
            if update.kind in ("done", "failed"):
                self._running.pop(update.digest, None)
        return updates

    def join(self, timeout: float) -> bool:
        """Wait for the running downloads to end (their updates then wait in `poll`)."""
        deadline = time.monotonic() + timeout
        for running in list(self._running.values()):
            running.thread.join(max(0.0, deadline - time.monotonic()))
        return not any(r.thread.is_alive() for r in self._running.values())

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel every download and wait for the threads; the partial files stay for later."""
        for running in self._running.values():
            running.cancel.set()
        for running in self._running.values():
            running.thread.join(timeout)

    def _run(self, wanted: Wanted, cancel: threading.Event) -> None:
        from ota.http_fetch import FetchCancelled, FetchError, RetryPolicy, fetch_bundle

        digest = wanted.digest
        steps = self._steps
        reported = -1

        def progress(have: int, total: int) -> None:
            nonlocal reported
            step = have * steps // total
            if step != reported:
                reported = step
                self._put(digest, "progress", progress=have / total)

        def on_retry(failures: int, delay: float, error: FetchError) -> None:
            self._put(
                digest,
                "retrying",
                reason=error.reason,
                message=f"attempt {failures} failed ({error}); retrying in {delay:.1f}s",
            )

        try:
            with self._client_factory() as client:
                path = fetch_bundle(
                    client,
                    wanted,
                    self.directory,
                    policy=self.policy or RetryPolicy(),
                    progress=progress,
                    on_retry=on_retry,
                    cancel=cancel,
                )
        except FetchCancelled:
            log.info("event=download_cancelled bundle=%s", digest[:12])
            return
        except FetchError as exc:
            self._put(digest, "failed", reason=exc.reason, message=str(exc))
            return
        except Exception as exc:  # disk full and the like: report, never die silently
            log.exception("event=download_crashed bundle=%s", digest[:12])
            self._put(digest, "failed", reason=TransferReason.DOWNLOAD_FAILED, message=repr(exc))
            return
        self._put(digest, "done", path=path)

    def _put(
        self,
        digest: str,
        kind: UpdateKind,
        *,
        progress: float | None = None,
        path: Path | None = None,
        reason: Reason | None = None,
        message: str = "",
    ) -> None:
        running = self._running.get(digest)
        cmd_id = running.cmd_id if running is not None else ""
        self._updates.put(DownloadUpdate(digest, cmd_id, kind, progress, path, reason, message))
