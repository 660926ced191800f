"""Tiling: run a small-input model over overlapping patches of a large frame and merge.

A 128- or 300-pixel model sees a 4K frame shrunk twelve-fold, so a face of 60 pixels becomes
five and is lost. Cutting the frame into overlapping tiles, each shrunk far less, keeps small
objects detectable; a pass over the whole frame catches objects larger than a tile. Detections
are mapped back to frame coordinates and merged per class: a box mostly covered by a better
one of the same label is the same object seen from two tiles (or cut by a tile edge).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from agent.detect.detector import Detector, FrameDetection
from agent.detect.preprocess import PreprocessError


@dataclass(frozen=True)
class Tile:
    """A patch of the frame in pixels: columns x0..x1, rows y0..y1 (ends exclusive)."""

    x0: int
    y0: int
    x1: int
    y1: int


def _starts(length: int, tile: int, overlap: float) -> list[int]:
    if length <= tile:
        return [0]
    step = tile * (1.0 - overlap)
    count = math.ceil((length - tile) / step) + 1
    # spread evenly so the last tile ends exactly on the frame's edge
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def plan_tiles(
    frame_width: int, frame_height: int, tile_width: int, tile_height: int, overlap: float = 0.25
) -> list[Tile]:
    """Tiles of the given size covering the frame, neighbours sharing at least `overlap`.

    Raises ValueError for non-positive sizes or an overlap outside [0, 0.9].
    """
    if min(frame_width, frame_height, tile_width, tile_height) <= 0:
        raise ValueError("frame and tile sizes must be positive")
    if not 0.0 <= overlap <= 0.9:
        raise ValueError(f"overlap must be within [0, 0.9], got {overlap}")
    tw, th = min(tile_width, frame_width), min(tile_height, frame_height)
    return [
        Tile(x, y, x + tw, y + th)
        for y in _starts(frame_height, th, overlap)
        for x in _starts(frame_width, tw, overlap)
    ]


def _coverage(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M): the share of each box of `a` that lies inside each box of `b`."""
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    out = np.zeros_like(inter)
    np.divide(inter, area[:, None], out=out, where=area[:, None] > 0)
    return out


def merge_detections(
    detections: list[FrameDetection], threshold: float = 0.6
) -> list[FrameDetection]:
    """Greedy per-label merge: drop a box when `threshold` of it (or of the kept box) lies
    inside a better-scoring kept box of the same label. Returns by falling score."""
    ordered = sorted(detections, key=lambda d: -d.score)
    kept: list[FrameDetection] = []
    for det in ordered:
        same = [k for k in kept if k.label == det.label]
        if same:
            box = np.asarray([det.box])
            others = np.asarray([k.box for k in same])
            covered = np.maximum(_coverage(box, others)[0], _coverage(others, box)[:, 0])
            if (covered >= threshold).any():
                continue
        kept.append(det)
    return kept


class TilingDetector:
    """Runs a Detector over overlapping tiles of each frame (and the whole frame) and merges."""

    def __init__(
        self,
        detector: Detector,
        *,
        tile_size: tuple[int, int] | None = None,
        overlap: float = 0.25,
        whole_frame: bool = True,
        merge_threshold: float = 0.6,
        min_frame_side: int = 0,
    ) -> None:
        """`tile_size` (width, height) in frame pixels defaults to the model's input size;
        frames whose longer side is at most `min_frame_side` are not tiled.

        Raises ValueError for an overlap outside [0, 0.9] or a non-positive tile size.
        """
        spec = detector.input_spec
        self.detector = detector
        self.tile_size = tile_size or (spec.width, spec.height)
        if min(self.tile_size) <= 0:
            raise ValueError(f"tile size must be positive, got {self.tile_size}")
        if not 0.0 <= overlap <= 0.9:
            raise ValueError(f"overlap must be within [0, 0.9], got {overlap}")
        self.overlap = overlap
        self.whole_frame = whole_frame
        self.merge_threshold = merge_threshold
        self.min_frame_side = min_frame_side
        self.last_tiles = 0

    def detect(self, frame_bgr: np.ndarray) -> list[FrameDetection]:
        """Detections in one BGR frame, frame-normalised, by falling score.

        Raises as Detector.detect does.
        """
        if frame_bgr.ndim != 3:
            raise PreprocessError(f"expected an HxWx3 frame, got {frame_bgr.shape}")
        height, width = frame_bgr.shape[:2]
        if max(width, height) <= self.min_frame_side:
            self.last_tiles = 1
            return self.detector.detect(frame_bgr)
        tiles = plan_tiles(width, height, *self.tile_size, overlap=self.overlap)
        found: list[FrameDetection] = []
        if self.whole_frame and len(tiles) > 1:
            found.extend(self.detector.detect(frame_bgr))
        for tile in tiles:
            # contiguous copy: OpenCV's resize is faster on it than on a strided view
            patch = np.ascontiguousarray(frame_bgr[tile.y0 : tile.y1, tile.x0 : tile.x1])
            tw, th = tile.x1 - tile.x0, tile.y1 - tile.y0
            for det in self.detector.detect(patch):
                x1, y1, x2, y2 = det.box
                box = (
                    (tile.x0 + x1 * tw) / width,
                    (tile.y0 + y1 * th) / height,
                    (tile.x0 + x2 * tw) / width,
                    (tile.y0 + y2 * th) / height,
                )
                found.append(FrameDetection(det.label, det.score, box))
        self.last_tiles = len(tiles) + (1 if self.whole_frame and len(tiles) > 1 else 0)
        return merge_detections(found, self.merge_threshold)
