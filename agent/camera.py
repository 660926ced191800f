"""Camera sources: open a V4L2 device, file, URL or GStreamer pipeline and keep only the
newest frame, on a thread of its own, reconnecting with backoff when the source dies."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import cv2
import numpy as np

from agent.settings import CameraSettings

log = logging.getLogger(__name__)


@dataclass
class CameraCounters:
    frames_in: int = 0
    frames_processed: int = 0
    frames_skipped: int = 0
    inference_ms_total: float = 0.0
    latency_ms_total: float = 0.0
    connected: bool = False
    reconnects: int = 0
    last_error: str = ""
    # (time, frames_in, frames_processed) at the last rate sample
    _mark: tuple[float, int, int] = field(default=(0.0, 0, 0))

    def rates(self) -> tuple[float, float]:
        """Frames in and processed per second since the previous call."""
        now = time.monotonic()
        then, fin, fproc = self._mark
        self._mark = (now, self.frames_in, self.frames_processed)
        if then == 0.0 or now <= then:
            return 0.0, 0.0
        return (self.frames_in - fin) / (now - then), (self.frames_processed - fproc) / (now - then)


def open_capture(source: str) -> cv2.VideoCapture:
    """Open a V4L2 index, a file, an URL or a GStreamer pipeline string."""
    if source.isdigit():
        return cv2.VideoCapture(int(source))
    if "!" in source:
        return cv2.VideoCapture(source, cv2.CAP_GSTREAMER)
    return cv2.VideoCapture(source)


class FrameGrabber:
    """Reads one source on its own thread and keeps only the newest frame."""

    def __init__(self, camera: CameraSettings, counters: CameraCounters) -> None:
        self.camera = camera
        self.counters = counters
        self._cond = threading.Condition()
        self._frame: np.ndarray | None = None
        self._frame_ts = 0.0
        self._seq = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"grab-{camera.id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(timeout=5)

    def latest(self, after_seq: int, timeout: float) -> tuple[int, np.ndarray | None, float]:
        """Wait for a frame newer than `after_seq`; returns (seq, frame, capture time)."""
        with self._cond:
            self._cond.wait_for(lambda: self._seq > after_seq or self._stop.is_set(), timeout)
            return self._seq, self._frame, self._frame_ts

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            cap = open_capture(self.camera.source)
            if not cap.isOpened():
                self._source_down(f"cannot open source {self.camera.source!r}", backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            self.counters.connected = True
            backoff = 0.5
            period = self._period(cap)
            next_due = time.monotonic()
            while not self._stop.is_set():
                ok, frame = cap.read()
                if not ok:
                    if self.camera.loop and cap.set(cv2.CAP_PROP_POS_FRAMES, 0):
                        ok, frame = cap.read()
                    if not ok:
                        break
                now = time.monotonic()
                with self._cond:
                    self._frame = frame
                    self._frame_ts = time.time()
                    self._seq += 1
                    self.counters.frames_in += 1
                    self._cond.notify_all()
                if period:
                    next_due = max(next_due + period, now - period)
                    self._stop.wait(max(0.0, next_due - time.monotonic()))
            cap.release()
            if not self._stop.is_set():
                self._source_down("source ended or failed", backoff)

    def _period(self, cap: cv2.VideoCapture) -> float:
        if not self.camera.realtime or self.camera.source.isdigit() or "://" in self.camera.source:
            return 0.0  # live sources pace themselves
        fps = self.camera.fps or cap.get(cv2.CAP_PROP_FPS) or 10.0
        return 1.0 / fps if fps > 0 else 0.1

    def _source_down(self, why: str, backoff: float) -> None:
        self.counters.connected = False
        self.counters.reconnects += 1
        self.counters.last_error = why
        log.warning(
            "event=source_down camera=%s reason=%r retry_s=%.1f", self.camera.id, why, backoff
        )
        self._stop.wait(backoff)
