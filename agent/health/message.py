"""One health message: the system sample, each camera's counters, the link's backlog and the
runtime workers' crash and restart counts.

Everything it reports is handed in, so the message is assembled without reaching into the
daemon; device sources (thermal zones, tegrastats, ...) are merged in afterwards by
`agent.health.sources.with_device_health`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from agent.health.system import SystemSample
from agent.pipeline.workers import CameraWorker
from protocol.messages import CameraHealth, Health, RuntimeWorkerHealth


@dataclass(frozen=True)
class LinkBacklog:
    """How the way to the broker is doing: messages waiting, messages lost, reconnects."""

    outbox_depth: int
    outbox_dropped: int
    mqtt_reconnects: int


def camera_health(worker: CameraWorker) -> CameraHealth:
    """One camera's counters since the last call (the rates restart at each call)."""
    c = worker.counters
    st = worker.stages
    fps_in, fps_processed = c.rates()
    processed = max(1, c.frames_processed)
    return CameraHealth(
        camera=worker.camera.id,
        connected=c.connected,
        fps_in=fps_in,
        fps_processed=fps_processed,
        frames_in=c.frames_in,
        frames_processed=c.frames_processed,
        frames_skipped=worker.frames_skipped,
        skipped_busy=st.skipped_busy,
        skipped_motion=st.skipped_motion,
        inference_ms=c.inference_ms_total / processed,
        latency_ms=c.latency_ms_total / processed,
        reconnects=c.reconnects,
        last_error=c.last_error[:256],
        since=c.since,
    )


def health_message(
    device_id: str,
    *,
    uptime_s: float,
    sample: SystemSample,
    cameras: Sequence[CameraWorker],
    link: LinkBacklog,
    runtime_workers: Sequence[RuntimeWorkerHealth] = (),
) -> Health:
    """Assemble one health message from a system sample, the cameras, the link and the runtime
    workers (none when every runtime runs in-process)."""
    return Health(
        device=device_id,
        uptime_s=uptime_s,
        cpu_percent=sample.cpu_percent,
        load1=sample.load1,
        mem_used_mb=sample.mem_used_mb,
        mem_total_mb=sample.mem_total_mb,
        disk_free_mb=sample.disk_free_mb,
        temperatures_c=sample.temperatures_c,
        cameras=tuple(camera_health(worker) for worker in cameras),
        outbox_depth=link.outbox_depth,
        outbox_dropped=link.outbox_dropped,
        mqtt_reconnects=link.mqtt_reconnects,
        unavailable=sample.unavailable,
        runtime_workers=tuple(runtime_workers),
    )
