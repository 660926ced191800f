"""What "the same detections on every runtime" means, shared by the consistency tests."""

from __future__ import annotations

import cv2
import numpy as np

from agent.detect.detector import FrameDetection
from agent.detect.nms import iou_matrix
from controller.demo.sample_video import Placement, astronaut_frame, render_placement

FRAME_SIZE = (640, 480)
MIN_IOU = 0.9
MAX_SCORE_GAP = 0.05
# low enough that every photo yields candidates to compare
CANDIDATE_THRESHOLD = 0.01
# candidates this close to the threshold may have a partner just below it
THRESHOLD_MARGIN = 0.01


def photo_frames() -> dict[str, np.ndarray]:
    """The test photos as camera frames: faces, close-ups, and scenes without a face."""
    import skimage.data

    frames = {
        name: render_placement(Placement(name), FRAME_SIZE)[0] for name in ("coffee", "rocket")
    }
    frames["astronaut-close"] = render_placement(
        Placement("astronaut", zoom=2.0, anchor=(0.44, 0.25), at=(0.62, 0.42)), FRAME_SIZE
    )[0]
    cat = cv2.cvtColor(skimage.data.chelsea(), cv2.COLOR_RGB2BGR)
    frames["chelsea"] = cv2.resize(cat, FRAME_SIZE, interpolation=cv2.INTER_AREA)
    frames["astronaut"] = astronaut_frame(FRAME_SIZE)[0]
    return frames


PHOTOS = photo_frames()


def assert_paired(a: list[FrameDetection], b: list[FrameDetection], *, floor: float = 0.0) -> int:
    """Every detection of one list scoring at least `floor` has a partner of its label in the
    other (IoU ≥ MIN_IOU, score within MAX_SCORE_GAP); returns how many were paired."""
    paired = 0
    for one, other in ((a, b), (b, a)):
        for detection in one:
            if detection.score < floor:
                continue  # near the threshold, a partner may fall just below it
            candidates = [d for d in other if d.label == detection.label]
            assert candidates, f"{detection} has no partner"
            ious = iou_matrix(np.array([detection.box]), np.array([d.box for d in candidates]))
            best = int(np.argmax(ious[0]))
            assert ious[0, best] >= MIN_IOU, f"{detection} vs {candidates[best]}"
            assert abs(candidates[best].score - detection.score) <= MAX_SCORE_GAP
            paired += 1
    return paired
