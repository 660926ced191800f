"""The camera pipeline: per camera, a grabber thread (agent.camera) keeps the newest frame and
an inference thread runs motion gate → model (preprocess, infer, decode) → filters → tracker on
it, handing track events to a sink that batches them into the outbox.

The grabber never waits on inference and inference never waits on publishing (the sink only
appends in memory; the outbox is written and drained on other threads), so the slowest stage
sets the pace and frames it cannot keep up with are counted as skipped (busy).
The model can be swapped between two frames; `retire` tells when the old one is free.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from agent.pipeline.filters import DetectionFilter
from agent.pipeline.motion import MotionGate
from agent.pipeline.settings import CameraSettings
from agent.pipeline.snapshots import SnapshotKeeper
from agent.pipeline.sources import CameraCounters, FrameGrabber
from agent.pipeline.tracker import IouTracker, Observation, TrackEvent

if TYPE_CHECKING:  # frames are numpy arrays, but numpy loads with the first camera
    import numpy as np

log = logging.getLogger(__name__)


class FrameDetector(Protocol):
    """What the pipeline needs of a loaded model."""

    def detect(self, frame_bgr: np.ndarray) -> list[Any]: ...


class FrameSource(Protocol):
    """What the pipeline needs of a grabber: the newest frame after a sequence number."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def latest(self, after_seq: int, timeout: float) -> tuple[int, np.ndarray | None, float]: ...


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
class StageCounters:
    """What the inference thread adds to a camera's counters: why frames were skipped."""

    skipped_busy: int = 0  # newer frames arrived while the model was still on an older one
    skipped_motion: int = 0  # still scene, inference not needed
    skipped_no_model: int = 0
    failed: int = 0
    events: int = 0
    processed_by: Counter[str] = field(default_factory=Counter)
    # (old model, new model, last frame seq on the old, first frame seq on the new)
    switches: list[tuple[str, str, int, int]] = field(default_factory=list)


EventSink = Callable[[str, list[TrackEvent], ActiveModel], None]


def observations(found: list[Any]) -> list[Observation]:
    """The detector's boxes as tracker observations (normalised, clipped)."""
    out = []
    for d in found:
        x1, y1, x2, y2 = (min(1.0, max(0.0, float(v))) for v in d.box[:4])
        out.append(Observation(str(d.label), min(1.0, max(0.0, float(d.score))), (x1, y1, x2, y2)))
    return out


class CameraWorker:
    """Runs the current model on the newest frame of one camera, as fast as the model allows."""

    def __init__(
        self,
        camera: CameraSettings,
        model: Callable[[], ActiveModel | None],
        sink: EventSink,
        heartbeat: Callable[[], None] = lambda: None,
        source: FrameSource | None = None,
        snapshots: SnapshotKeeper | None = None,
    ) -> None:
        self.camera = camera
        self.snapshots = snapshots
        self.counters = CameraCounters()
        self.stages = StageCounters()
        self.grabber: FrameSource = source or FrameGrabber(camera, self.counters)
        self.filter = DetectionFilter(camera.filters)
        self.motion = MotionGate(camera.motion)
        self.tracker = IouTracker(camera.tracker)
        self._model = model
        self._sink = sink
        self._heartbeat = heartbeat
        self._stop = threading.Event()
        # held while a frame is on a model: `Pipeline.retire` takes it to know the old is free
        self.busy = threading.Lock()
        self.generation_seen = 0
        self._last: tuple[str, int] = ("", 0)
        self._thread = threading.Thread(target=self._run, name=f"infer-{camera.id}", daemon=True)

    def start(self) -> None:
        self.grabber.start()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.grabber.stop()
        self._thread.join(timeout=10)

    @property
    def frames_skipped(self) -> int:
        s = self.stages
        return s.skipped_busy + s.skipped_motion + s.skipped_no_model

    def _run(self) -> None:
        seq = 0
        model: ActiveModel | None = None
        last_captured = time.time()
        while not self._stop.is_set():
            self._heartbeat()
            new_seq, frame, captured = self.grabber.latest(seq, timeout=1.0)
            if frame is None or new_seq == seq:
                continue
            if new_seq > seq + 1:
                self.stages.skipped_busy += new_seq - seq - 1
            seq, last_captured = new_seq, captured
            with self.busy:
                model = self._model()
                if model is None:
                    self.stages.skipped_no_model += 1
                # capture time, not now: a paced file or a late frame keeps its own clock
                elif not self.motion.needs_inference(frame, captured):
                    self.stages.skipped_motion += 1
                else:
                    self._process(seq, frame, captured, model)
            self.counters.frames_skipped = self.frames_skipped
        if model is not None:
            # the camera stops: its tracks end at the last frame seen
            self._emit(self.tracker.flush(last_captured), model)

    def _process(self, seq: int, frame: np.ndarray, captured: float, model: ActiveModel) -> None:
        started = time.perf_counter()
        try:
            found = model.detector.detect(frame)
        except Exception as exc:  # a model that fails on one frame must not kill the camera
            self.stages.failed += 1
            self.counters.last_error = f"inference failed: {exc}"
            log.exception("event=inference_failed camera=%s", self.camera.id)
            return
        self.counters.inference_ms_total += (time.perf_counter() - started) * 1000.0
        if self._last[0] and self._last[0] != model.label:
            self.stages.switches.append((self._last[0], model.label, self._last[1], seq))
        self._last = (model.label, seq)
        events = self.tracker.update(self.filter.apply(observations(found)), captured)
        if self.snapshots is not None:
            self.snapshots.observe(self.camera.id, self.tracker.tracks, frame, captured)
        self._emit(events, model)
        self.counters.frames_processed += 1
        self.stages.processed_by[model.label] += 1
        self.counters.latency_ms_total += max(0.0, time.time() - captured) * 1000.0

    def _emit(self, events: list[TrackEvent], model: ActiveModel) -> None:
        if events:
            self.stages.events += len(events)
            self._sink(self.camera.id, events, model)


class Pipeline:
    """All cameras of the agent and the model they share; `swap` changes it between frames."""

    def __init__(
        self,
        cameras: list[CameraSettings],
        sink: EventSink,
        heartbeat: Callable[[], None],
        sources: dict[str, FrameSource] | None = None,
        snapshots: SnapshotKeeper | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._model: ActiveModel | None = None
        sources = sources or {}
        self.workers = [
            CameraWorker(c, self.current, sink, heartbeat, sources.get(c.id), snapshots)
            for c in cameras
        ]

    def current(self) -> ActiveModel | None:
        return self._model

    def swap(self, model: ActiveModel | None) -> ActiveModel | None:
        """Make `model` the one used from the next frame on; returns the previous one."""
        with self._lock:
            old, self._model = self._model, model
        return old

    def retire(self, old: ActiveModel, timeout: float = 10.0) -> bool:
        """Wait until no camera still runs a frame on `old` (after a swap); False on timeout."""
        deadline = time.monotonic() + timeout
        for worker in self.workers:
            # a worker reads the model inside `busy`, so once we held it the old one is unused
            if not worker.busy.acquire(timeout=max(0.0, deadline - time.monotonic())):
                return False
            worker.busy.release()
        return True

    def start(self) -> None:
        for worker in self.workers:
            worker.start()

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
