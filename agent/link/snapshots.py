"""Answers snapshot commands: encodes a kept best frame as JPEG and delivers it.

With an `upload_url` the JPEG goes out as one HTTP POST (image/jpeg); without one it is
published in chunks on the device's `snap` topic (protocol.codec.encode_snapshot_chunk), and
the ack that follows says how many chunks and bytes to expect. Delivery runs on its own
thread, so a slow upload never holds up the control loop (commands, deployments, health).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from agent.link.origin import ControllerOrigin, ForeignOrigin
from agent.pipeline.snapshots import SnapshotKeeper
from protocol.codec import encode_snapshot_chunk
from protocol.messages import TRANSFER_TOKEN_HEADER, Snapshot

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

SNAPSHOT_CHUNK_BYTES = 64 * 1024
AckFn = Callable[[str, bool, str, str], None]


def encode_jpeg(frame: object, quality: int) -> bytes:
    """A BGR frame as JPEG bytes; raises ValueError when OpenCV cannot encode it."""
    import cv2  # loaded on the first snapshot, not with the agent

    ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])  # type: ignore[call-overload]
    if not ok:
        raise ValueError("JPEG encoding failed")
    return bytes(buf.tobytes())


class SnapshotDelivery:
    """One worker thread that answers snapshot commands in arrival order (a few may wait)."""

    def __init__(
        self,
        keeper: SnapshotKeeper,
        publish: Callable[[bytes], object],
        ack: AckFn,
        *,
        upload_timeout_s: float = 10.0,
        chunk_bytes: int = SNAPSHOT_CHUNK_BYTES,
        max_waiting: int = 8,
        transport: httpx.BaseTransport | None = None,
        origin: ControllerOrigin | None = None,
    ) -> None:
        self.keeper = keeper
        self._publish = publish
        self._ack = ack
        self.upload_timeout_s = upload_timeout_s
        self.chunk_bytes = chunk_bytes
        self._transport = transport
        # uploads go to the controller's origin only; the agent always hands its own in
        # (None, for tests of the upload itself: any URL, system CAs)
        self.origin = origin
        self._queue: queue.Queue[Snapshot | None] = queue.Queue(maxsize=max_waiting)
        self._thread: threading.Thread | None = None

    def submit(self, command: Snapshot) -> None:
        """Queue a command; acks `busy` at once when too many wait."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="snapshots", daemon=True)
            self._thread.start()
        try:
            self._queue.put_nowait(command)
        except queue.Full:
            self._ack(command.id, False, "busy", "too many snapshot requests waiting")

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=self.upload_timeout_s + 5)

    def _run(self) -> None:
        while (command := self._queue.get()) is not None:
            try:
                ok, result, detail = self.deliver(command)
            except Exception as exc:  # one bad request must not end the worker
                log.exception("event=snapshot_failed cmd=%s", command.id)
                ok, result, detail = False, "error", str(exc)[:4096]
            self._ack(command.id, ok, result, detail)

    def deliver(self, command: Snapshot) -> tuple[bool, str, str]:
        """Encode and send one snapshot: (ok, result, detail) for the ack."""
        if command.upload_url and self.origin is not None:
            try:
                self.origin.check(command.upload_url)
            except ForeignOrigin as exc:
                # refused before a frame is even encoded: nothing of the camera leaves
                log.warning("event=snapshot_upload_refused cmd=%s error=%r", command.id, str(exc))
                return False, "foreign_origin", str(exc)[:4096]
        kept = self.keeper.get(command.camera, command.track_id)
        if kept is None:
            return False, "not_found", f"no frame kept for {command.camera}/{command.track_id}"
        started = time.perf_counter()
        jpeg = encode_jpeg(kept.frame, self.keeper.settings.jpeg_quality)
        encode_ms = (time.perf_counter() - started) * 1000.0
        height, width = kept.frame.shape[:2]
        facts = (
            f"bytes={len(jpeg)} width={width} height={height} score={kept.score:.3f} "
            f"ts={kept.ts:.3f} encode_ms={encode_ms:.1f}"
        )
        log.info("event=snapshot camera=%s track=%d %s", command.camera, command.track_id, facts)
        if command.upload_url:
            return self._upload(command.upload_url, command.upload_token, jpeg, facts)
        total = max(1, -(-len(jpeg) // self.chunk_bytes))
        for index in range(total):
            part = jpeg[index * self.chunk_bytes : (index + 1) * self.chunk_bytes]
            self._publish(encode_snapshot_chunk(command.id, index, total, part))
        return True, "sent", f"chunks={total} {facts}"

    def _upload(
        self, url: str, token: str | None, jpeg: bytes, facts: str
    ) -> tuple[bool, str, str]:
        import httpx  # loaded on the first upload, not with the agent

        timeout = httpx.Timeout(self.upload_timeout_s, connect=min(5.0, self.upload_timeout_s))
        try:
            with httpx.Client(
                timeout=timeout,
                transport=self._transport,
                verify=self.origin.verify() if self.origin is not None else True,
                follow_redirects=False,
            ) as client:
                headers = {"content-type": "image/jpeg"}
                if token is not None:
                    headers[TRANSFER_TOKEN_HEADER] = token
                response = client.post(url, content=jpeg, headers=headers)
        except httpx.HTTPError as exc:
            return False, "upload_failed", f"{type(exc).__name__}: {exc}"[:4096]
        if response.is_success:
            return True, "uploaded", facts
        return False, "upload_failed", f"HTTP {response.status_code} {facts}"
