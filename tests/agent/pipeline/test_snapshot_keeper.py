"""The snapshot keeper: the best frame of each track, bounded memory, eviction order."""

from __future__ import annotations

import numpy as np

from agent.pipeline.snapshots import SnapshotKeeper, SnapshotSettings
from agent.pipeline.tracker import IouTracker, Observation, TrackerSettings


def frame(value: int, shape: tuple[int, int] = (48, 64)) -> np.ndarray:
    return np.full((*shape, 3), value, dtype=np.uint8)


def test_the_frame_of_the_best_score_is_kept_and_later_worse_frames_are_not():
    keeper = SnapshotKeeper()
    assert keeper.offer("cam0", 1, 0.5, frame(1), 1.0)
    assert keeper.offer("cam0", 1, 0.9, frame(2), 2.0)
    assert not keeper.offer("cam0", 1, 0.7, frame(3), 3.0)
    kept = keeper.get("cam0", 1)
    assert kept is not None and kept.score == 0.9 and kept.ts == 2.0
    assert int(kept.frame[0, 0, 0]) == 2
    assert keeper.copies == 2
    assert keeper.get("cam0", 2) is None and keeper.get("cam1", 1) is None


def test_the_kept_frame_is_a_copy_so_a_reused_buffer_cannot_change_it():
    keeper = SnapshotKeeper()
    buffer = frame(7)
    keeper.offer("cam0", 1, 0.8, buffer, 1.0)
    buffer[:] = 0
    kept = keeper.get("cam0", 1)
    assert kept is not None and int(kept.frame.max()) == 7


def test_memory_is_bounded_per_camera_by_count_and_bytes():
    one = frame(0).nbytes
    keeper = SnapshotKeeper(SnapshotSettings(max_per_camera=3, max_bytes_per_camera=1 << 20))
    for track in range(10):
        keeper.offer("cam0", track, 0.5, frame(track), float(track))
    assert [e.track_id for e in keeper.frames("cam0")] == [7, 8, 9]
    assert keeper.kept_bytes("cam0") == 3 * one
    assert keeper.evicted == 7
    # the other camera has its own budget
    keeper.offer("cam1", 1, 0.5, frame(1), 1.0)
    assert len(keeper.frames("cam0")) == 3 and len(keeper.frames("cam1")) == 1

    big = (512, 1024)  # 1.5 MiB a frame against a 4 MiB budget
    by_bytes = SnapshotKeeper(SnapshotSettings(max_bytes_per_camera=4 << 20))
    for track in range(5):
        by_bytes.offer("cam0", track, 0.5, frame(track, big), float(track))
    assert len(by_bytes.frames("cam0")) == 2
    assert by_bytes.kept_bytes("cam0") <= 4 << 20


def test_ended_tracks_are_evicted_before_live_ones_and_expire_after_keep_s():
    keeper = SnapshotKeeper(SnapshotSettings(max_per_camera=2, keep_s=10.0))
    keeper.offer("cam0", 1, 0.5, frame(1), 1.0)  # live, oldest
    keeper.offer("cam0", 2, 0.5, frame(2), 2.0)
    keeper.live("cam0", [1], 3.0)  # track 2 ended
    keeper.offer("cam0", 3, 0.5, frame(3), 4.0)
    assert {e.track_id for e in keeper.frames("cam0")} == {1, 3}

    keeper.live("cam0", [3], 5.0)  # track 1 ended at 5
    assert keeper.get("cam0", 1) is not None  # still asked for after its end
    keeper.live("cam0", [3], 15.5)
    assert keeper.get("cam0", 1) is None
    assert keeper.get("cam0", 3) is not None


def test_a_track_id_seen_again_after_its_end_is_a_new_track():
    keeper = SnapshotKeeper()
    keeper.offer("cam0", 1, 0.9, frame(1), 1.0)
    keeper.live("cam0", [], 2.0)
    # the tracker started over (pipeline restart): a weaker frame of the new track 1 wins
    assert keeper.offer("cam0", 1, 0.4, frame(4), 3.0)
    kept = keeper.get("cam0", 1)
    assert kept is not None and kept.score == 0.4 and kept.ended_at is None


def test_observe_keeps_only_frames_that_set_a_tracks_best_score():
    tracker = IouTracker(TrackerSettings(min_hits=1))
    keeper = SnapshotKeeper()
    box = (0.1, 0.1, 0.4, 0.4)
    scores = [0.6, 0.8, 0.7, 0.95, 0.5]
    for i, score in enumerate(scores):
        tracker.update([Observation("face", score, box)], float(i))
        keeper.observe("cam0", tracker.tracks, frame(i), float(i))
    kept = keeper.get("cam0", 1)
    assert kept is not None and kept.score == 0.95 and int(kept.frame[0, 0, 0]) == 3
    assert keeper.copies == 3  # 0.6, 0.8, 0.95
    disabled = SnapshotKeeper(SnapshotSettings(enabled=False))
    disabled.observe("cam0", tracker.tracks, frame(9), 4.0)
    assert disabled.frames("cam0") == []


def test_tracks_whose_best_frame_is_the_same_share_one_copy_of_it():
    tracker = IouTracker(TrackerSettings(min_hits=1))
    one = frame(0).nbytes
    keeper = SnapshotKeeper()
    faces = [
        Observation("face", 0.9, (0.0, 0.0, 0.1, 0.1)),
        Observation("face", 0.8, (0.5, 0.5, 0.6, 0.6)),
        Observation("face", 0.7, (0.8, 0.1, 0.9, 0.2)),
    ]
    tracker.update(faces, 1.0)
    keeper.observe("cam0", tracker.tracks, frame(1), 1.0)
    kept = keeper.frames("cam0")
    assert sorted(k.track_id for k in kept) == [1, 2, 3]
    assert len({id(k.frame) for k in kept}) == 1 and keeper.copies == 1
    assert keeper.kept_bytes("cam0") == one  # counted once against the byte budget
    # a later, better frame for one face only: that face moves to its own copy
    tracker.update([Observation("face", 0.95, (0.0, 0.0, 0.1, 0.1)), *faces[1:]], 2.0)
    keeper.observe("cam0", tracker.tracks, frame(2), 2.0)
    assert keeper.copies == 2 and keeper.kept_bytes("cam0") == 2 * one
    best = keeper.get("cam0", 1)
    assert best is not None and int(best.frame[0, 0, 0]) == 2
    other = keeper.get("cam0", 2)
    assert other is not None and int(other.frame[0, 0, 0]) == 1


def test_a_shared_frame_counts_once_against_the_byte_budget():
    tracker = IouTracker(TrackerSettings(min_hits=1))
    keeper = SnapshotKeeper(SnapshotSettings(max_bytes_per_camera=2 << 20))
    big = frame(1, (700, 700))  # 1.4 MiB: three of it would not fit, one does
    faces = [Observation("face", 0.9 - i / 10, (i / 4, 0.0, i / 4 + 0.1, 0.1)) for i in range(3)]
    tracker.update(faces, 1.0)
    keeper.observe("cam0", tracker.tracks, big, 1.0)
    assert len(keeper.frames("cam0")) == 3 and keeper.evicted == 0
