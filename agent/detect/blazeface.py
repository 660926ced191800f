"""BlazeFace (MediaPipe face detection, short range) decoder.

The model predicts, for each of its SSD anchors, one face logit and 16 regressors: the box
centre offset and size, then six (x, y) keypoints, all in model-input pixels. Anchors have a
fixed size of 1, so a box is (anchor centre + offset / input size, size / input size).
For the 128×128 short-range model the anchors come from strides 8, 16, 16, 16 with two anchors
per cell and layer: 16×16×2 + 8×8×6 = 896.

Overlapping detections are merged with weighted NMS by default (as MediaPipe does for this
model): neighbouring anchors fire together on one face, and averaging them gives a steadier
box than keeping the single best anchor. `params.nms = "plain"` keeps the best one instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from agent.detect.decoding import (
    Decoded,
    DecodeError,
    decoder_params,
    sized_decoder,
)
from agent.detect.nms import nms, weighted_nms
from ota.manifest import InputSpec, PostprocessSpec

SHORT_RANGE_STRIDES = (8, 16, 16, 16)


class BlazeFaceParams(BaseModel):
    """`PostprocessSpec.params` understood by this decoder."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    strides: tuple[Annotated[int, Field(gt=0)], ...] = SHORT_RANGE_STRIDES
    anchors_per_layer: Annotated[int, Field(gt=0)] = 2
    anchor_offset: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5
    # logits are clipped before the sigmoid so float32 exp cannot overflow
    raw_score_limit: Annotated[float, Field(gt=0.0)] = 80.0
    nms: Literal["weighted", "plain"] = "weighted"


def generate_anchors(
    input_width: int,
    input_height: int,
    strides: Sequence[int] = SHORT_RANGE_STRIDES,
    *,
    anchors_per_layer: int = 2,
    offset: float = 0.5,
) -> np.ndarray:
    """SSD anchor centres (N, 2) as normalised x, y, in the order the model emits them.

    Consecutive layers with the same stride share one feature map, so their anchors are
    interleaved per cell rather than emitted layer after layer.
    """
    centres: list[np.ndarray] = []
    i = 0
    while i < len(strides):
        stride = strides[i]
        same = 1
        while i + same < len(strides) and strides[i + same] == stride:
            same += 1
        rows = math.ceil(input_height / stride)
        cols = math.ceil(input_width / stride)
        ys, xs = np.meshgrid(
            (np.arange(rows) + offset) / rows, (np.arange(cols) + offset) / cols, indexing="ij"
        )
        grid = np.stack([xs.ravel(), ys.ravel()], axis=1)
        centres.append(np.repeat(grid, same * anchors_per_layer, axis=0))
        i += same
    return np.concatenate(centres).astype(np.float32)


class BlazeFaceDecoder:
    """Decodes BlazeFace outputs into face boxes in model-input coordinates."""

    def __init__(
        self,
        input_width: int,
        input_height: int,
        *,
        score_threshold: float = 0.5,
        iou_threshold: float = 0.3,
        max_detections: int = 100,
        params: BlazeFaceParams | None = None,
    ) -> None:
        self.params = params or BlazeFaceParams()
        self.anchors = generate_anchors(
            input_width,
            input_height,
            self.params.strides,
            anchors_per_layer=self.params.anchors_per_layer,
            offset=self.params.anchor_offset,
        )
        self._scale = np.array([input_width, input_height], dtype=np.float32)
        self.score_threshold = score_threshold
        self.iou_threshold = iou_threshold
        self.max_detections = max_detections
        # the logit a score must beat, so the sigmoid runs only on candidates
        limit = self.params.raw_score_limit
        if score_threshold <= 0.0:
            self._logit_threshold = -math.inf
        elif score_threshold >= 1.0:
            self._logit_threshold = math.inf
        else:
            logit = math.log(score_threshold / (1.0 - score_threshold))
            self._logit_threshold = min(max(logit, -limit), limit)

    def __call__(self, outputs: Sequence[np.ndarray]) -> Decoded:
        """Raises DecodeError when the outputs are not one score and one regressor tensor."""
        logits, regressors = self._split(outputs)
        limit = self.params.raw_score_limit
        # `>=` on the clipped logit matches `score >= threshold` after the sigmoid
        candidates = np.flatnonzero(np.clip(logits, -limit, limit) >= self._logit_threshold)
        if candidates.size == 0:
            return Decoded.empty()

        raw = regressors[candidates, :4].astype(np.float64)
        centre = self.anchors[candidates] + raw[:, 0:2] / self._scale
        size = raw[:, 2:4] / self._scale
        boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
        scores = 1.0 / (
            1.0 + np.exp(-np.clip(logits[candidates].astype(np.float64), -limit, limit))
        )
        valid = (size[:, 0] > 0) & (size[:, 1] > 0)
        boxes, scores = boxes[valid], scores[valid]
        if scores.size == 0:
            return Decoded.empty()

        if self.params.nms == "weighted":
            boxes, scores, classes = weighted_nms(
                boxes, scores, self.iou_threshold, max_detections=self.max_detections
            )
        else:
            keep = nms(boxes, scores, self.iou_threshold, max_detections=self.max_detections)
            boxes, scores = boxes[keep], scores[keep]
            classes = np.zeros(keep.shape[0], dtype=np.int64)
        return Decoded(boxes=boxes, scores=scores, classes=classes)

    def _split(self, outputs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        count = self.anchors.shape[0]
        if len(outputs) != 2:
            raise DecodeError(f"BlazeFace has 2 outputs, got {len(outputs)}")
        # identified by shape, not position: scores have one value per anchor
        first, second = (np.asarray(o) for o in outputs)
        if first.size == count:
            logits, regressors = first, second
        elif second.size == count:
            logits, regressors = second, first
        else:
            raise DecodeError(
                f"no BlazeFace score output of {count} values among "
                f"{first.shape} and {second.shape}"
            )
        if regressors.size % count or regressors.size // count < 4:
            raise DecodeError(f"regressors {regressors.shape} do not fit {count} anchors")
        return logits.reshape(count), regressors.reshape(count, -1)


def build(input_spec: InputSpec, postprocess: PostprocessSpec) -> BlazeFaceDecoder:
    """A decoder for this input size and post-processing spec.

    Raises UnsupportedPostprocessError for invalid `params`.
    """
    params = decoder_params(BlazeFaceParams, postprocess, "BlazeFace")
    return sized_decoder(BlazeFaceDecoder, params, input_spec, postprocess)
