"""Tiling high-resolution frames: the plan, the merge, and a small face in a 4K frame."""

from __future__ import annotations

import numpy as np
import pytest

from agent.detect.detector import FrameDetection
from agent.detect.nms import iou_matrix
from agent.detect.tiling import TilingDetector, merge_detections, plan_tiles
from controller.demo.sample_video import Placement, render_placement

UHD = (3840, 2160)


@pytest.mark.parametrize(
    ("frame", "tile", "overlap"),
    [
        ((3840, 2160), (256, 256), 0.25),
        ((1920, 1080), (300, 300), 0.2),
        ((1000, 700), (333, 500), 0),
    ],
)
def test_tiles_cover_the_frame_with_the_overlap_asked_for(frame, tile, overlap):
    width, height = frame
    tiles = plan_tiles(width, height, tile[0], tile[1], overlap=overlap)
    covered = np.zeros((height, width), dtype=bool)
    for t in tiles:
        assert (t.x1 - t.x0, t.y1 - t.y0) == tile
        assert t.x0 >= 0 and t.y0 >= 0
        assert t.x1 <= width and t.y1 <= height
        covered[t.y0 : t.y1, t.x0 : t.x1] = True
    assert covered.all()
    xs = sorted({t.x0 for t in tiles})
    steps = np.diff(xs)
    assert steps.max() <= tile[0] * (1 - overlap) + 1


def test_a_frame_smaller_than_a_tile_is_one_tile():
    assert len(plan_tiles(100, 80, 256, 256)) == 1
    with pytest.raises(ValueError):
        plan_tiles(100, 80, 256, 256, overlap=0.95)


def test_merge_keeps_one_box_per_object_and_label():
    face = FrameDetection("face", 0.9, (0.10, 0.10, 0.20, 0.20))
    # the same face cut by a tile edge: a lower-scoring box lying inside the full one
    cut = FrameDetection("face", 0.7, (0.10, 0.10, 0.15, 0.20))
    other = FrameDetection("face", 0.6, (0.50, 0.50, 0.60, 0.60))
    person = FrameDetection("person", 0.8, (0.09, 0.09, 0.21, 0.21))
    merged = merge_detections([cut, other, face, person])
    assert merged == [face, person, other]


def test_small_face_in_a_4k_frame_is_found_with_tiling_and_missed_without(face_detector):
    # the astronaut photo shrunk so that her face is about 37 pixels wide in a 3840x2160 frame
    frame, faces = render_placement(Placement("astronaut", zoom=0.1, at=(0.3, 0.6)), UHD)
    truth = np.asarray(faces)
    assert (truth[0, 2] - truth[0, 0]) * UHD[0] < 40

    plain = face_detector.detect(frame)
    assert not any(iou_matrix(np.asarray([d.box]), truth)[0, 0] > 0.1 for d in plain)

    tiled = TilingDetector(face_detector, tile_size=(256, 256), overlap=0.25)
    found = tiled.detect(frame)
    assert tiled.last_tiles > 100
    assert len(found) == 1, found
    assert found[0].label == "face"
    assert iou_matrix(np.asarray([found[0].box]), truth)[0, 0] > 0.6


def test_a_large_face_is_still_found_once(face_detector):
    # larger than a tile: the whole-frame pass finds it, pieces seen by tiles merge into it
    frame, faces = render_placement(Placement("astronaut"), (1280, 720))
    found = TilingDetector(face_detector, tile_size=(256, 256)).detect(frame)
    assert len(found) == 1, found
    assert iou_matrix(np.asarray([found[0].box]), np.asarray(faces))[0, 0] > 0.6


def test_small_frames_skip_tiling(face_detector):
    frame, _ = render_placement(Placement("astronaut"), (640, 480))
    tiled = TilingDetector(face_detector, tile_size=(128, 128), min_frame_side=640)
    assert tiled.detect(frame) == face_detector.detect(frame)
    assert tiled.last_tiles == 1
