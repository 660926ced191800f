"""The IoU tracker, filters and motion gate: per-frame boxes become one start, few updates, one end."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from agent.pipeline.filters import DetectionFilter, FilterSettings, inside
from agent.pipeline.motion import MotionGate, MotionSettings
from agent.pipeline.tracker import IouTracker, Observation, TrackerSettings, iou

FACE = Observation("face", 0.8, (0.4, 0.2, 0.6, 0.5))


def moved(obs: Observation, dx: float, score: float | None = None) -> Observation:
    x1, y1, x2, y2 = obs.box
    return Observation(obs.label, obs.score if score is None else score, (x1 + dx, y1, x2 + dx, y2))


def run(tracker: IouTracker, frames: list[list[Observation]], dt: float = 0.1) -> list:
    events = []
    for i, found in enumerate(frames):
        events += tracker.update(found, ts=1000.0 + i * dt)
    return events


def test_a_steady_object_gives_one_start_and_one_end_with_its_best_sighting():
    tracker = IouTracker(TrackerSettings(min_hits=2, max_missed=3))
    best = Observation("face", 0.95, (0.41, 0.2, 0.61, 0.5))
    events = run(tracker, [[FACE], [FACE], [best], [FACE], [], [], []])
    assert [e.kind for e in events] == ["start", "end"]
    start, end = events
    assert start.track_id == end.track_id
    assert start.ts == 1000.1  # confirmed on the second hit
    assert end.best_score == pytest.approx(0.95)
    assert end.best_box == best.box
    assert tracker.tracks == []


def test_a_single_frame_flicker_is_not_reported():
    tracker = IouTracker(TrackerSettings(min_hits=2, max_missed=2))
    assert run(tracker, [[FACE], [], [], [], []]) == []


def test_updates_only_on_material_change_and_rate_limited():
    settings = TrackerSettings(min_hits=1, max_missed=2, move_iou=0.6, update_interval_s=0.5)
    tracker = IouTracker(settings)
    frames = [[FACE]] + [[moved(FACE, 0.002 * i)] for i in range(1, 6)]  # jitter: no update
    frames += [[moved(FACE, 0.08)]] * 3  # a real move: one update, not three
    frames += [[moved(FACE, 0.16)]]  # moved again but within the rate limit of the last one
    events = run(tracker, frames)
    kinds = [e.kind for e in events]
    assert kinds == ["start", "update"]
    assert events[1].box == moved(FACE, 0.08).box


def test_a_much_better_score_is_an_update():
    tracker = IouTracker(TrackerSettings(min_hits=1, score_gain=0.1, update_interval_s=0))
    events = run(tracker, [[FACE], [moved(FACE, 0, 0.85)], [moved(FACE, 0, 0.95)]])
    assert [e.kind for e in events] == ["start", "update"]
    assert events[1].score == pytest.approx(0.95)


def test_two_objects_get_two_tracks_and_labels_do_not_mix():
    tracker = IouTracker(TrackerSettings(min_hits=1, max_missed=1))
    left = Observation("face", 0.9, (0.0, 0.0, 0.2, 0.2))
    right = Observation("face", 0.9, (0.7, 0.7, 0.9, 0.9))
    person = Observation("person", 0.9, left.box)
    events = run(tracker, [[left, right, person], [left, right, person], []])
    starts = [e for e in events if e.kind == "start"]
    ends = [e for e in events if e.kind == "end"]
    assert len(starts) == 3 and len(ends) == 3
    assert len({e.track_id for e in starts}) == 3


def test_flush_ends_confirmed_tracks_only():
    tracker = IouTracker(TrackerSettings(min_hits=2))
    run(tracker, [[FACE], [FACE]])
    tracker.update([Observation("face", 0.9, (0.0, 0.0, 0.1, 0.1))], 2000.0)  # tentative
    assert [e.kind for e in tracker.flush(2001.0)] == ["end"]


def test_iou_of_disjoint_identical_and_empty_boxes():
    assert iou((0, 0, 1, 1), (0, 0, 1, 1)) == 1.0
    assert iou((0, 0, 0.1, 0.1), (0.5, 0.5, 0.6, 0.6)) == 0.0
    assert iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0


def test_filters_keep_labels_scores_areas_and_zone_by_bottom_centre():
    zone = [(0.0, 0.5), (0.5, 0.5), (0.5, 1.0), (0.0, 1.0)]  # lower-left quarter
    f = DetectionFilter(
        FilterSettings(labels=["person"], min_score=0.5, min_area=0.01, zones=[zone])
    )
    standing_in = Observation("person", 0.9, (0.1, 0.2, 0.3, 0.7))  # feet at (0.2, 0.7)
    head_in_feet_out = Observation("person", 0.9, (0.1, 0.6, 0.3, 0.45 + 0.6))
    assert f.keep(standing_in)
    assert not f.keep(Observation("face", 0.9, standing_in.box))
    assert not f.keep(Observation("person", 0.4, standing_in.box))
    assert not f.keep(Observation("person", 0.9, (0.1, 0.6, 0.15, 0.65)))  # area 0.0025
    assert not f.keep(Observation("person", 0.9, (0.6, 0.2, 0.8, 0.7)))  # feet right of zone
    assert f.apply([standing_in, head_in_feet_out]) == [standing_in]


def test_point_in_polygon_edges_and_concave_shapes():
    l_shape = [(0, 0), (1, 0), (1, 0.4), (0.4, 0.4), (0.4, 1), (0, 1)]
    assert inside((0.2, 0.8), l_shape)
    assert not inside((0.8, 0.8), l_shape)
    assert inside((1.0, 0.2), l_shape)  # on an edge


def test_a_zone_needs_three_points():
    with pytest.raises(ValidationError):
        FilterSettings(zones=[[(0.0, 0.0), (1.0, 1.0)]])


def test_motion_gate_skips_still_frames_and_wakes_on_motion_or_idle():
    gate = MotionGate(MotionSettings(enabled=True, max_idle_s=5.0))
    rng = np.random.default_rng(1)
    still = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
    noisy = np.clip(still.astype(np.int16) + rng.integers(-3, 4, still.shape), 0, 255)
    assert gate.needs_inference(still, 0.0)  # first frame
    assert not gate.needs_inference(noisy.astype(np.uint8), 0.1)  # sensor noise is not motion
    changed = still.copy()
    changed[60:180, 100:220] = 255 - changed[60:180, 100:220]
    assert gate.needs_inference(changed, 0.2)
    assert not gate.needs_inference(changed, 0.3)
    assert gate.needs_inference(changed, 5.3)  # idle too long: infer anyway


def test_motion_gate_off_infers_every_frame():
    gate = MotionGate(MotionSettings(enabled=False))
    frame = np.zeros((10, 10, 3), np.uint8)
    assert all(gate.needs_inference(frame, t) for t in range(3))
