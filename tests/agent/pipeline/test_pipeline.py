"""The pipeline on a video with known faces: one start and one end per face, at the right place."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.detect.detector import Detector
from agent.pipeline.motion import MotionSettings
from agent.pipeline.settings import CameraSettings
from agent.pipeline.tracker import TrackerSettings, TrackEvent, iou
from agent.pipeline.workers import ActiveModel, Pipeline
from agent.runtimes.litert import LiteRTRuntime
from controller.demo.sample_video import SampleVideo, write_sample_video
from ota.manifest import InputSpec, PostprocessSpec

FPS = 10


class LockstepVideo:
    """Every frame of a video file, in order, each handed out once the previous one was taken.

    Frame `i` is stamped `i / FPS` seconds, so the pipeline's events map back to frames.
    """

    def __init__(self, path: Path) -> None:
        cap = cv2.VideoCapture(str(path))
        self.frames: list[np.ndarray] = []
        while len(self.frames) < 1000:
            ok, frame = cap.read()
            if not ok:
                break
            self.frames.append(frame)
        cap.release()
        self.done = threading.Event()

    def start(self) -> None:
        pass

    def stop(self) -> None:
        self.done.set()

    def latest(self, after_seq: int, timeout: float) -> tuple[int, np.ndarray | None, float]:
        if after_seq >= len(self.frames):
            self.done.set()
            self.done.wait(timeout)
            return after_seq, None, 0.0
        return after_seq + 1, self.frames[after_seq], after_seq / FPS


def blazeface(model_path: Path, version: int = 1) -> ActiveModel:
    runtime = LiteRTRuntime(num_threads=1)
    runtime.load(model_path)
    detector = Detector(
        runtime,
        InputSpec(width=128, height=128, color="rgb", mean=(127.5,) * 3, std=(127.5,) * 3),
        PostprocessSpec(kind="blazeface", score_threshold=0.6, iou_threshold=0.3),
        ["face"],
    )
    return ActiveModel(
        detector, "blazeface-short", version, "0" * 64, "litert", close=runtime.close
    )


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> SampleVideo:
    # astronaut, two photos without faces, the astronaut again enlarged somewhere else
    return write_sample_video(
        tmp_path_factory.mktemp("video") / "faces.avi", fps=FPS, seconds_per_image=1.0
    )


@pytest.fixture(scope="module")
def model(blazeface_model) -> Iterator[ActiveModel]:
    loaded = blazeface(blazeface_model)
    yield loaded
    loaded.close()


def run_video(video: SampleVideo, model: ActiveModel, camera: CameraSettings):
    events: list[TrackEvent] = []
    source = LockstepVideo(video.path)
    pipeline = Pipeline(
        [camera], lambda cam, evs, m: events.extend(evs), lambda: None, {camera.id: source}
    )
    pipeline.swap(model)
    pipeline.start()
    assert source.done.wait(30), "the pipeline did not get through the video"
    pipeline.stop()
    return events, pipeline.workers[0], len(source.frames)


def check_one_start_and_end_per_face(video: SampleVideo, events: list[TrackEvent]) -> None:
    faces = [s for s in video.scenes if s.faces]
    tracks: dict[int, list[TrackEvent]] = {}
    for e in events:
        tracks.setdefault(e.track_id, []).append(e)
    assert len(tracks) == len(faces), [(e.kind, e.track_id, e.ts) for e in events]
    for scene, (_, evs) in zip(faces, sorted(tracks.items()), strict=True):
        kinds = [e.kind for e in evs]
        assert kinds.count("start") == 1 and kinds.count("end") == 1
        assert kinds[0] == "start" and kinds[-1] == "end"
        start, end = evs[0], evs[-1]
        # it starts within its scene and ends within a few frames after the face is gone
        assert scene.start <= round(start.ts * FPS) < scene.stop
        assert scene.start < round(end.ts * FPS) <= min(scene.stop + 10, video.frame_count)
        assert iou(start.box, scene.faces[0]) >= 0.5, (start.box, scene.faces[0])
        assert iou(end.best_box, scene.faces[0]) >= 0.5, (end.best_box, scene.faces[0])
        assert end.best_score >= start.score


def test_every_face_track_gives_one_start_and_one_end_at_the_right_place(video, model):
    camera = CameraSettings(
        id="cam0", source=str(video.path), tracker=TrackerSettings(min_hits=2, max_missed=5)
    )
    events, worker, frames = run_video(video, model, camera)
    check_one_start_and_end_per_face(video, events)
    assert frames == video.frame_count
    # counters: every frame was either processed or skipped, never both or neither
    assert worker.counters.frames_processed + worker.frames_skipped == frames
    assert worker.stages.skipped_motion == 0
    assert worker.counters.inference_ms_total > 0


def test_motion_gating_skips_still_frames_and_keeps_the_same_tracks(video, model):
    camera = CameraSettings(
        id="cam0",
        source=str(video.path),
        tracker=TrackerSettings(min_hits=2, max_missed=5),
        motion=MotionSettings(enabled=True, max_idle_s=0.25),
    )
    events, worker, frames = run_video(video, model, camera)
    check_one_start_and_end_per_face(video, events)
    # still scenes: only scene changes and the idle refresh every third frame are inferred
    assert worker.stages.skipped_motion >= frames // 2
    assert worker.counters.frames_processed + worker.frames_skipped == frames


def test_zone_filter_keeps_only_the_face_standing_in_it(video, model):
    # a zone around the first scene's face's bottom-centre only
    (x1, _, x2, y2) = video.scenes[0].faces[0]
    cx = (x1 + x2) / 2
    zone = [
        (cx - 0.05, y2 - 0.05),
        (cx + 0.05, y2 - 0.05),
        (cx + 0.05, y2 + 0.05),
        (cx - 0.05, y2 + 0.05),
    ]
    camera = CameraSettings.model_validate(
        {"id": "cam0", "source": str(video.path), "filters": {"zones": [zone]}}
    )
    events, _, _ = run_video(video, model, camera)
    starts = [e for e in events if e.kind == "start"]
    assert len(starts) == 1
    assert iou(starts[0].box, video.scenes[0].faces[0]) >= 0.5
