"""Runtime workers inside the agent: the loader, the pipeline, hot swap and probation work the
same with a worker, and a worker killed mid-stream is reported and restarted while the
pipeline goes on, with no frame processed twice and nothing lost on the way to the outbox."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.deploy.loader import load_model
from agent.deploy.probation import CountingDetector
from agent.detect.detector import Detector
from agent.health.message import LinkBacklog, health_message
from agent.health.system import SystemSample
from agent.link.outbox import Outbox, OutboxSettings
from agent.link.telemetry import DetectionBatcher
from agent.pipeline.settings import CameraSettings
from agent.pipeline.tracker import TrackerSettings, TrackEvent
from agent.pipeline.workers import ActiveModel, Pipeline
from agent.runtimes.base import Runtime, RuntimeProbe
from agent.runtimes.litert import LiteRTRuntime
from agent.runtimes.worker.launch import WorkerEvent, WorkerEventKind, WorkerLaunch
from agent.runtimes.worker.proxy import WorkerRuntime, worker_runtime_class
from agent.selection import choose_runtime
from controller.demo.sample_video import SampleVideo, astronaut_frame, write_sample_video
from controller.demo.waiting import wait_until
from controller.release.recipes import example_spec
from ota.build import build_bundle
from ota.install import SlotStore
from ota.manifest import InputSpec, PostprocessSpec
from protocol.codec import decode, encode
from protocol.events import RuntimeWorkerState
from protocol.messages import Health

FPS = 10
BLAZEFACE_SPEC = InputSpec(width=128, height=128, color="rgb", mean=(127.5,) * 3, std=(127.5,) * 3)
BLAZEFACE_POST = PostprocessSpec(kind="blazeface", score_threshold=0.6, iou_threshold=0.3)


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> SampleVideo:
    return write_sample_video(
        tmp_path_factory.mktemp("video") / "faces.avi", fps=FPS, seconds_per_image=1.0
    )


@pytest.fixture(scope="module")
def frames(video) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(video.path))
    out = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        out.append(frame)
    cap.release()
    return out


class PacedFrames:
    """The video's frames in order, looped up to `total`, one every `period` seconds; frame
    `i` is stamped `i / FPS`, and `seq_of` maps a frame object back to its number."""

    def __init__(self, frames: list[np.ndarray], total: int, period: float = 0.0) -> None:
        self.frames = [frames[i % len(frames)].copy() for i in range(total)]
        self._ids = {id(f): i + 1 for i, f in enumerate(self.frames)}
        self.period = period
        self.done = threading.Event()

    def seq_of(self, frame: np.ndarray) -> int:
        return self._ids[id(frame)]

    def start(self) -> None:
        pass

    def stop(self) -> None:
        self.done.set()

    def latest(self, after_seq: int, timeout: float) -> tuple[int, np.ndarray | None, float]:
        if after_seq >= len(self.frames):
            self.done.set()
            self.done.wait(timeout)
            return after_seq, None, 0.0
        if self.period:
            time.sleep(self.period)
        return after_seq + 1, self.frames[after_seq], after_seq / FPS


class RecordingDetector:
    """Which frames a detector finished and which failed, by frame number."""

    def __init__(self, inner: Detector, seq_of) -> None:
        self.inner = inner
        self.seq_of = seq_of
        self.done: list[int] = []
        self.failed: list[int] = []
        self.progress = threading.Condition()

    def detect(self, frame: np.ndarray) -> list:
        seq = self.seq_of(frame)
        try:
            found = self.inner.detect(frame)
        except Exception:
            self.failed.append(seq)
            raise
        with self.progress:
            self.done.append(seq)
            self.progress.notify_all()
        return found

    def wait_done(self, count: int, timeout: float = 30.0) -> bool:
        with self.progress:
            return self.progress.wait_for(lambda: len(self.done) >= count, timeout)


def blazeface_runtime(model: Path, tmp_path: Path, events=None, worker: bool = True) -> Runtime:
    runtime: Runtime
    if not worker:
        runtime = LiteRTRuntime(num_threads=1)
    else:
        launch = WorkerLaunch(
            python=sys.executable, shm_dir=tmp_path, backoff_s=0.2, backoff_max_s=0.4
        )
        runtime = worker_runtime_class("litert", launch, events).create(num_threads=1)
    runtime.load(model)
    return runtime


def active(runtime, version: int = 1) -> ActiveModel:
    detector = Detector(runtime, BLAZEFACE_SPEC, BLAZEFACE_POST, ["face"])
    return ActiveModel(
        detector, "blazeface-short", version, "0" * 64, runtime.KEY, close=runtime.close
    )


def collect(into: list[TrackEvent], camera: str, events: list[TrackEvent], model) -> None:
    into.extend(events)


def run(frames, model: ActiveModel, total: int, sink) -> Pipeline:
    camera = CameraSettings(id="cam0", source="unused", tracker=TrackerSettings(min_hits=2))
    source = PacedFrames(frames, total)
    pipeline = Pipeline([camera], sink, lambda: None, {"cam0": source})
    pipeline.swap(model)
    pipeline.start()
    assert source.done.wait(60), "the pipeline did not get through the frames"
    pipeline.stop()
    return pipeline


def test_a_worker_gives_the_same_track_events_as_in_process(
    blazeface_model, tmp_path, frames
) -> None:
    results = []
    for worker in (False, True):
        events: list[TrackEvent] = []
        model = active(blazeface_runtime(blazeface_model, tmp_path, worker=worker))
        try:
            run(frames, model, len(frames), partial(collect, events))
        finally:
            model.close()
        results.append([(e.kind, e.track_id, e.ts, e.box) for e in events])
    assert results[0], "the video has faces: there must be events"
    assert results[0] == results[1]


def test_a_worker_killed_mid_stream_is_reported_restarted_and_nothing_is_lost(
    blazeface_model, tmp_path, frames
) -> None:
    worker_events: list[WorkerEvent] = []
    runtime = blazeface_runtime(blazeface_model, tmp_path, worker_events.append)
    assert isinstance(runtime, WorkerRuntime)
    model = active(runtime)
    source = PacedFrames(frames, total=len(frames) * 3, period=0.01)
    recorder = RecordingDetector(model.detector, source.seq_of)  # type: ignore[arg-type]
    model.detector = recorder

    outbox = Outbox(tmp_path / "outbox.sqlite", OutboxSettings(journal=True))
    sent_ids: list[str] = []

    def publish(payload: bytes, ids: list[str]) -> None:
        outbox.put("edgefleet/v1/dev/cam-1/det", payload, ids)
        sent_ids.extend(ids)

    batcher = DetectionBatcher(publish, "cam-1", max_batch=5, max_delay=0.05)
    handed: list[TrackEvent] = []

    def sink(camera: str, events: list[TrackEvent], m: ActiveModel) -> None:
        handed.extend(events)
        batcher.add(camera, events, m)

    camera = CameraSettings(id="cam0", source="unused", tracker=TrackerSettings(min_hits=2))
    pipeline = Pipeline([camera], sink, lambda: None, {"cam0": source})
    pipeline.swap(model)
    pipeline.start()
    try:
        assert recorder.wait_done(15), "no frames before the kill"
        first_pid = runtime.pid
        assert first_pid is not None
        os.kill(first_pid, signal.SIGKILL)
        killed_at = len(recorder.done)
        assert recorder.wait_done(killed_at + 15), "the pipeline did not go on after the kill"
        # the health the agent sends now, through the wire and back
        health = decode(
            encode(
                health_message(
                    "cam-1",
                    uptime_s=1.0,
                    sample=SystemSample(),
                    cameras=pipeline.workers,
                    link=LinkBacklog(outbox_depth=0, outbox_dropped=0, mqtt_reconnects=0),
                    runtime_workers=[runtime.worker_health()],
                )
            ),
            Health,
        )
        assert source.done.wait(60)
    finally:
        pipeline.stop()
        batcher.flush()
        model.close()

    stats = pipeline.workers[0].stages
    counters = pipeline.workers[0].counters
    # reported: the failed frames, the camera's last error, a crash and a restart event
    assert stats.failed == len(recorder.failed) >= 1
    assert "worker" in counters.last_error
    kinds = [e.kind for e in worker_events]
    assert kinds[0] == WorkerEventKind.CRASHED
    assert WorkerEventKind.RESTARTED in kinds
    assert runtime.crashes == 1 and runtime.restarts == 1
    # and in health: the crash, the restart, the new worker and why the old one died
    (reported,) = health.runtime_workers
    assert reported.runtime == "litert"
    assert reported.crashes >= 1 and reported.restarts >= 1
    assert reported.state == RuntimeWorkerState.RUNNING
    assert reported.pid is not None and reported.pid != first_pid
    assert f"pid {first_pid}" in reported.last_crash
    closed = runtime.worker_health()
    assert (closed.state, closed.pid) == (RuntimeWorkerState.STOPPED, None)
    # no frame processed twice, and a failed frame is never retried
    assert len(recorder.done) == len(set(recorder.done))
    assert not set(recorder.done) & set(recorder.failed)
    assert recorder.done == sorted(recorder.done)
    assert counters.frames_processed == len(recorder.done)
    # every event handed on reached the outbox, once
    stored = outbox.oldest(10_000)
    detections = [d for item in stored for d in json.loads(item.payload)["detections"]]
    assert len(detections) == len(handed) == len(sent_ids) > 0
    assert outbox.journal_ids() == sent_ids
    assert len(set(sent_ids)) == len(sent_ids)
    outbox.close()


def test_hot_swap_between_workers_stops_the_old_one(blazeface_model, tmp_path, frames) -> None:
    old_runtime = blazeface_runtime(blazeface_model, tmp_path)
    new_runtime = blazeface_runtime(blazeface_model, tmp_path)
    assert isinstance(old_runtime, WorkerRuntime)
    old, new = active(old_runtime, 1), active(new_runtime, 2)
    camera = CameraSettings(id="cam0", source="unused")
    source = PacedFrames(frames, total=len(frames), period=0.005)
    pipeline = Pipeline([camera], lambda *a: None, lambda: None, {"cam0": source})
    pipeline.swap(old)
    pipeline.start()
    try:
        stages = pipeline.workers[0].stages
        wait_until("frames on the old model", lambda: stages.processed_by["blazeface-short@1"] > 3)
        old_pid = old_runtime.pid
        assert pipeline.swap(new) is old
        assert pipeline.retire(old)
        old.close()
        assert old_pid is not None
        with pytest.raises(ProcessLookupError):
            os.kill(old_pid, 0)
        assert source.done.wait(60)
    finally:
        pipeline.stop()
        new.close()
    stages = pipeline.workers[0].stages
    assert stages.processed_by["blazeface-short@1"] > 0
    assert stages.processed_by["blazeface-short@2"] > 0
    assert stages.failed == 0


def test_the_loader_runs_a_bundle_in_a_worker_and_probation_counts_its_crash(
    tmp_path, release_key, trust
) -> None:
    spec = example_spec("blazeface-short")
    built = build_bundle(
        spec, tmp_path, [release_key], tmp_path / "b.bundle", datetime.now(timezone.utc)
    )
    installed = SlotStore(tmp_path / "store").install(built.path, trust, built.manifest.created)
    choice = choose_runtime(
        installed.manifest, [RuntimeProbe("litert", True, "worker")], ("litert",)
    )
    launch = WorkerLaunch(python=sys.executable, shm_dir=tmp_path, backoff_s=5.0)
    model = load_model(
        installed, choice, threads=1, runtime_class=worker_runtime_class("litert", launch)
    )
    counted = CountingDetector(model.detector)
    try:
        frame, _ = astronaut_frame((640, 480))
        assert [d.label for d in counted.detect(frame)] == ["face"]
        runtime = model.detector.runtime  # type: ignore[attr-defined]
        assert isinstance(runtime, WorkerRuntime) and runtime.pid is not None
        os.kill(runtime.pid, signal.SIGKILL)
        with pytest.raises(Exception, match="worker"):
            counted.detect(frame)
        assert (counted.frames, counted.errors) == (1, 1)
        assert "worker" in counted.last_error
    finally:
        model.close()
