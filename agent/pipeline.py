"""The camera pipeline: a grabber per camera keeps only the newest frame; a worker per camera
runs the current model on it. The model can be swapped between two frames.

The grabber never waits on inference and inference never waits on a full queue, so the
slowest stage sets the pace and frames it cannot keep up with are counted as skipped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import cv2
import numpy as np

from agent.settings import CameraSettings

log = logging.getLogger(__name__)


class FrameDetector(Protocol):
    """What the pipeline needs of a loaded model."""

    def detect(self, frame_bgr: np.ndarray) -> list[Any]: ...


@dataclass
class ActiveModel:
    """A loaded model and what the agent reports about it."""

    detector: FrameDetector
    name: str
    version: int
    digest: str
    runtime: str
    reason: str = ""
    close: Callable[[], None] = lambda: None

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"


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


DetectionSink = Callable[[str, float, list[Any], ActiveModel], None]


class CameraWorker:
    """Runs the current model on the newest frame of one camera, as fast as the model allows."""

    def __init__(
        self,
        camera: CameraSettings,
        model: Callable[[], ActiveModel | None],
        sink: DetectionSink,
        heartbeat: Callable[[], None] = lambda: None,
    ) -> None:
        self.camera = camera
        self.counters = CameraCounters()
        self.grabber = FrameGrabber(camera, self.counters)
        self._model = model
        self._sink = sink
        self._heartbeat = heartbeat
        self._stop = threading.Event()
        self.generation_seen = 0
        self._thread = threading.Thread(target=self._run, name=f"infer-{camera.id}", daemon=True)

    def start(self) -> None:
        self.grabber.start()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.grabber.stop()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        seq = 0
        while not self._stop.is_set():
            self._heartbeat()
            new_seq, frame, captured = self.grabber.latest(seq, timeout=1.0)
            if frame is None or new_seq == seq:
                continue
            if seq and new_seq > seq + 1:
                self.counters.frames_skipped += new_seq - seq - 1
            seq = new_seq
            model = self._model()
            if model is None:
                self.counters.frames_skipped += 1
                continue
            started = time.perf_counter()
            try:
                found = model.detector.detect(frame)
            except Exception as exc:  # a model that fails on one frame must not kill the camera
                self.counters.last_error = f"inference failed: {exc}"
                log.exception("event=inference_failed camera=%s", self.camera.id)
                continue
            self.counters.inference_ms_total += (time.perf_counter() - started) * 1000.0
            self.counters.frames_processed += 1
            self.counters.latency_ms_total += max(0.0, time.time() - captured) * 1000.0
            if found:
                self._sink(self.camera.id, captured, found, model)


class Pipeline:
    """All cameras of the agent and the model they share; `swap` changes it between frames."""

    def __init__(
        self, cameras: list[CameraSettings], sink: DetectionSink, heartbeat: Callable[[], None]
    ) -> None:
        self._lock = threading.Lock()
        self._model: ActiveModel | None = None
        self.workers = [CameraWorker(c, self.current, sink, heartbeat) for c in cameras]

    def current(self) -> ActiveModel | None:
        return self._model

    def swap(self, model: ActiveModel | None) -> ActiveModel | None:
        """Make `model` the one used from the next frame on; returns the previous one."""
        with self._lock:
            old, self._model = self._model, model
        return old

    def start(self) -> None:
        for worker in self.workers:
            worker.start()

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
