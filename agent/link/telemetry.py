"""Detections out of the agent: track events from every camera, batched into the outbox."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from agent.pipeline.tracker import TrackEvent
from agent.pipeline.workers import ActiveModel
from protocol.codec import encode
from protocol.messages import Box, Detection, DetectionBatch


def _unit(value: float) -> float:
    return min(1.0, max(0.0, float(value)))


class DetectionBatcher:
    """Collects track events from all cameras and writes them to the outbox in batches.

    A batch goes out when it is full or its oldest event has waited `max_delay`, so the
    broker sees few large messages instead of one per event. `add` runs on the cameras'
    inference threads and only appends in memory; `flush_due` runs on the control thread.
    """

    def __init__(
        self,
        publish: Callable[[bytes, list[str]], object],
        device_id: str,
        max_batch: int = 100,
        max_delay: float = 0.5,
    ) -> None:
        self._publish = publish
        self.device_id = device_id
        self.max_batch = max_batch
        self.max_delay = max_delay
        self._lock = threading.Lock()
        self._pending: list[tuple[tuple[str, str], Detection]] = []
        self._oldest = 0.0
        self.sent = 0

    def add(self, camera: str, events: list[TrackEvent], model: ActiveModel) -> None:
        key = (model.label, model.runtime)
        detections = [(key, detection_of(camera, e)) for e in events]
        with self._lock:
            if not self._pending:
                self._oldest = time.monotonic()
            self._pending.extend(detections)

    def flush_due(self) -> None:
        with self._lock:
            due = len(self._pending) >= self.max_batch or (
                self._pending and time.monotonic() - self._oldest >= self.max_delay
            )
            if due:
                self._flush_locked()

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        pending, self._pending = self._pending, []
        # one batch per run of events from the same model, at most max_batch each
        start = 0
        while start < len(pending):
            key = pending[start][0]
            stop = start
            while stop < len(pending) and stop - start < self.max_batch and pending[stop][0] == key:
                stop += 1
            part = tuple(d for _, d in pending[start:stop])
            batch = DetectionBatch(
                device=self.device_id, model=key[0], runtime=key[1], detections=part
            )
            self._publish(encode(batch), [d.id for d in part])
            self.sent += len(part)
            start = stop


def detection_of(camera: str, event: TrackEvent) -> Detection:
    """The wire form of one track event; an end carries the track's best score and box."""
    score, box = (
        (event.best_score, event.best_box)
        if event.kind == "end"
        else (
            event.score,
            event.box,
        )
    )
    return Detection(
        camera=camera,
        track_id=event.track_id,
        event=event.kind,
        label=event.label[:256],
        score=_unit(score),
        box=Box(x1=_unit(box[0]), y1=_unit(box[1]), x2=_unit(box[2]), y2=_unit(box[3])),
        ts=event.ts,
    )
