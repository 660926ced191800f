"""Telemetry out of the agent: detection batches and health messages."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from agent.health import SystemSample
from agent.pipeline import ActiveModel
from protocol.codec import encode
from protocol.messages import Box, CameraHealth, Detection, DetectionBatch, Health

if TYPE_CHECKING:
    from agent.daemon import Agent


def _unit(value: float) -> float:
    return min(1.0, max(0.0, float(value)))


class DetectionBatcher:
    """Collects detections from all cameras and publishes them in batches.

    A batch goes out when it is full or its oldest detection has waited `max_delay`, so the
    broker sees few large messages instead of one per frame.
    """

    def __init__(
        self,
        publish: Callable[[bytes], object],
        device_id: str,
        max_batch: int = 100,
        max_delay: float = 0.5,
    ) -> None:
        self._publish = publish
        self.device_id = device_id
        self.max_batch = max_batch
        self.max_delay = max_delay
        self._lock = threading.Lock()
        self._pending: list[Detection] = []
        self._model = ("", "")
        self._oldest = 0.0
        self.sent = 0

    def add(self, camera: str, captured: float, found: list[Any], model: ActiveModel) -> None:
        detections = [
            Detection(
                camera=camera,
                label=str(d.label)[:256],
                score=_unit(d.score),
                box=Box(
                    x1=_unit(d.box[0]), y1=_unit(d.box[1]), x2=_unit(d.box[2]), y2=_unit(d.box[3])
                ),
                ts=captured,
            )
            for d in found
        ]
        key = (model.label, model.runtime)
        with self._lock:
            if key != self._model and self._pending:
                self._flush_locked()
            self._model = key
            if not self._pending:
                self._oldest = time.monotonic()
            self._pending.extend(detections)
            if len(self._pending) >= self.max_batch:
                self._flush_locked()

    def flush_due(self) -> None:
        with self._lock:
            if self._pending and time.monotonic() - self._oldest >= self.max_delay:
                self._flush_locked()

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        while self._pending:
            part, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
            batch = DetectionBatch(
                device=self.device_id,
                model=self._model[0],
                runtime=self._model[1],
                detections=tuple(part),
            )
            self._publish(encode(batch))
            self.sent += len(part)


def health_message(agent: Agent, sample: SystemSample) -> Health:
    """Assemble one health message from a system sample and the pipeline's counters."""
    cameras = []
    for worker in agent.pipeline.workers:
        c = worker.counters
        fps_in, fps_processed = c.rates()
        processed = max(1, c.frames_processed)
        cameras.append(
            CameraHealth(
                camera=worker.camera.id,
                connected=c.connected,
                fps_in=fps_in,
                fps_processed=fps_processed,
                frames_in=c.frames_in,
                frames_processed=c.frames_processed,
                frames_skipped=c.frames_skipped,
                inference_ms=c.inference_ms_total / processed,
                latency_ms=c.latency_ms_total / processed,
            )
        )
    return Health(
        device=agent.device_id,
        uptime_s=agent.uptime.seconds(),
        cpu_percent=sample.cpu_percent,
        load1=sample.load1,
        mem_used_mb=sample.mem_used_mb,
        mem_total_mb=sample.mem_total_mb,
        disk_free_mb=sample.disk_free_mb,
        temperatures_c=sample.temperatures_c,
        cameras=tuple(cameras),
        mqtt_reconnects=agent.session.reconnects,
        unavailable=sample.unavailable,
    )
