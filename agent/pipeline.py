"""The camera pipeline: a worker per camera runs the current model on the newest frame its
grabber (agent.camera) holds. The model can be swapped between two frames.

The grabber never waits on inference and inference never waits on a full queue, so the
slowest stage sets the pace and frames it cannot keep up with are counted as skipped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from agent.camera import CameraCounters, FrameGrabber
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
