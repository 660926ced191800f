"""YOLO detection heads: v5 style (box, objectness, class scores) and v8 style (no objectness).

A v5 head gives one row per candidate: centre x, centre y, width, height, objectness, then one
score per class; a candidate's score for a class is objectness × class score. A v8 head drops
the objectness and comes transposed: one row per value (4 + classes) and one column per
candidate. Exports differ in orientation, so `layout` can override what the version implies.
Boxes are in input pixels unless `normalized` says the export divided them already. Each
candidate keeps its best class, and NMS runs per class, so a person and the bicycle under them
both survive.
"""

from __future__ import annotations

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
from agent.detect.nms import nms
from ota.manifest import InputSpec, PostprocessSpec


class YoloParams(BaseModel):
    """`PostprocessSpec.params` understood by this decoder."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal["v5", "v8"] = "v8"
    # rows are candidates ("candidates") or values ("values"); None: what the version exports
    layout: Literal["candidates", "values"] | None = None
    normalized: bool = False
    # which output holds the detections, for exports that add auxiliary outputs
    output_index: Annotated[int, Field(ge=0)] = 0
    # NMS cost grows with the square of the candidates; keep only the best this many
    max_candidates: Annotated[int, Field(gt=0)] = 3000


class YoloDecoder:
    """Decodes a YOLO v5/v8 head into boxes in model-input coordinates."""

    def __init__(
        self,
        input_width: int,
        input_height: int,
        *,
        score_threshold: float = 0.25,
        iou_threshold: float = 0.45,
        max_detections: int = 100,
        params: YoloParams | None = None,
    ) -> None:
        self.params = params or YoloParams()
        self.input_width = input_width
        self.input_height = input_height
        self.score_threshold = score_threshold
        self.iou_threshold = iou_threshold
        self.max_detections = max_detections
        self._extra = 1 if self.params.version == "v5" else 0
        layout = self.params.layout or ("candidates" if self.params.version == "v5" else "values")
        self._transposed = layout == "values"

    def __call__(self, outputs: Sequence[np.ndarray]) -> Decoded:
        """Raises DecodeError when the chosen output is not a YOLO head of this version."""
        rows = self._rows(outputs)
        boxes_xywh = rows[:, :4].astype(np.float64)
        class_scores = rows[:, 4 + self._extra :].astype(np.float64)
        if self._extra:
            class_scores = class_scores * rows[:, 4:5].astype(np.float64)
        classes = np.argmax(class_scores, axis=1)
        scores = class_scores[np.arange(classes.size), classes]
        keep = np.flatnonzero(scores >= self.score_threshold)
        if keep.size == 0:
            return Decoded.empty()
        if keep.size > self.params.max_candidates:
            best = np.argsort(-scores[keep], kind="stable")[: self.params.max_candidates]
            keep = keep[best]
        cx, cy, w, h = boxes_xywh[keep].T
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
        if not self.params.normalized:
            boxes[:, 0::2] /= self.input_width
            boxes[:, 1::2] /= self.input_height
        scores, classes = scores[keep], classes[keep].astype(np.int64)
        kept = nms(
            boxes, scores, self.iou_threshold, classes=classes, max_detections=self.max_detections
        )
        return Decoded(boxes=boxes[kept], scores=scores[kept], classes=classes[kept])

    def _rows(self, outputs: Sequence[np.ndarray]) -> np.ndarray:
        index = self.params.output_index
        if index >= len(outputs):
            raise DecodeError(f"YOLO output {index} asked for, the model gave {len(outputs)}")
        array = np.asarray(outputs[index])
        if array.ndim == 3 and array.shape[0] == 1:
            array = array[0]
        if array.ndim != 2:
            raise DecodeError(f"a YOLO head is (candidates, values) per image, got {array.shape}")
        rows = array.T if self._transposed else array
        if rows.shape[1] < 5 + self._extra:
            raise DecodeError(
                f"a YOLO {self.params.version} head needs at least {5 + self._extra} values "
                f"per candidate, got {rows.shape[1]} (shape {array.shape}; layout wrong?)"
            )
        return rows


def build(input_spec: InputSpec, postprocess: PostprocessSpec) -> YoloDecoder:
    """A decoder for this input size and post-processing spec.

    Raises UnsupportedPostprocessError for invalid `params`.
    """
    params = decoder_params(YoloParams, postprocess, "YOLO")
    return sized_decoder(YoloDecoder, params, input_spec, postprocess)
