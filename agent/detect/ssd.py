"""SSD decoder for models exported by the TensorFlow Object Detection API.

Such a graph ends in its own post-processing and emits, per image, `detection_boxes` (N, 4) as
normalised [y1, x1, y2, x2], `detection_classes` (N,) as 1-based class ids (COCO ids for the
COCO models, with the gaps of the 90-id map), `detection_scores` (N,) and `num_detections`,
how many of the N rows are filled. Runtimes return them in name order, which is that order.
OpenCV DNN runs the same graph with a `DetectionOutput` layer instead: one (1, 1, N, 7) tensor
of [image, class id, score, x1, y1, x2, y2] rows; both forms are accepted.

Class ids map to the manifest's labels as `labels[id - label_offset]`. `keep_classes` drops
every class id not listed (a person/vehicle bundle keeps 6 of COCO's 80), and the survivors go
through class-aware NMS once more, so every runtime's output is thinned by the same rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from agent.detect.decoding import Decoded, DecodeError, decoder_params
from agent.detect.nms import nms
from ota.manifest import InputSpec, PostprocessSpec


class SSDParams(BaseModel):
    """`PostprocessSpec.params` understood by this decoder."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # the model's id of labels[0]: TF OD API ids start at 1 (0 is the background)
    label_offset: Annotated[int, Field(ge=0)] = 1
    # class ids to keep, in the model's numbering; empty keeps every class
    keep_classes: tuple[Annotated[int, Field(ge=0)], ...] = ()
    # coordinate order of the 4-output form's boxes
    box_order: Literal["yxyx", "xyxy"] = "yxyx"


class SSDDecoder:
    """Decodes TF Object Detection API SSD outputs into boxes in model-input coordinates."""

    def __init__(
        self,
        *,
        score_threshold: float = 0.5,
        iou_threshold: float = 0.5,
        max_detections: int = 100,
        params: SSDParams | None = None,
    ) -> None:
        self.params = params or SSDParams()
        self.score_threshold = score_threshold
        self.iou_threshold = iou_threshold
        self.max_detections = max_detections
        # a lookup table by class id: one gather per frame instead of a set-membership search
        self._keep: np.ndarray | None = None
        if self.params.keep_classes:
            self._keep = np.zeros(max(self.params.keep_classes) + 1, dtype=bool)
            self._keep[list(self.params.keep_classes)] = True

    def __call__(self, outputs: Sequence[np.ndarray]) -> Decoded:
        """Raises DecodeError when the outputs are neither form described in the module."""
        if len(outputs) == 4:
            boxes, class_ids, scores = self._split_four(outputs)
        elif len(outputs) == 1:
            boxes, class_ids, scores = self._split_detection_output(outputs[0])
        else:
            raise DecodeError(f"SSD has 4 outputs (or 1 DetectionOutput), got {len(outputs)}")

        # class ids below the offset are the background, which has no label
        wanted = (scores >= self.score_threshold) & (class_ids >= self.params.label_offset)
        if self._keep is not None:
            listed = np.clip(class_ids, 0, self._keep.size - 1)
            wanted &= self._keep[listed] & (listed == class_ids)
        wanted &= (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        if not wanted.any():
            return Decoded.empty()
        boxes, class_ids, scores = boxes[wanted], class_ids[wanted], scores[wanted]
        keep = nms(
            boxes,
            scores,
            self.iou_threshold,
            classes=class_ids,
            max_detections=self.max_detections,
        )
        return Decoded(
            boxes=boxes[keep],
            scores=scores[keep],
            classes=class_ids[keep] - self.params.label_offset,
        )

    def _split_four(
        self, outputs: Sequence[np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        arrays = [np.asarray(o) for o in outputs]
        # boxes and the count are told apart by shape; classes come before scores by name
        box_at = [i for i, a in enumerate(arrays) if a.ndim >= 2 and a.shape[-1] == 4]
        # with a single row, classes and scores hold one value too: the count sorts last
        count_at = [i for i, a in enumerate(arrays) if a.size == 1 and i not in box_at]
        if len(box_at) != 1 or not count_at:
            raise DecodeError(
                f"SSD outputs need one (N, 4) box tensor and one count, got "
                f"{[a.shape for a in arrays]}"
            )
        boxes = arrays[box_at[0]].reshape(-1, 4)
        rows = boxes.shape[0]
        class_raw, score_raw = (arrays[i] for i in range(4) if i not in (box_at[0], count_at[-1]))
        if class_raw.size != rows or score_raw.size != rows:
            raise DecodeError(
                f"SSD classes {class_raw.shape} and scores {score_raw.shape} do not fit "
                f"{rows} boxes"
            )
        count = float(arrays[count_at[-1]].reshape(()))
        if not np.isfinite(count):
            raise DecodeError(f"SSD detection count {count} is not a number")
        filled = int(min(max(count, 0.0), rows))
        boxes = boxes[:filled].astype(np.float64)
        if self.params.box_order == "yxyx":
            boxes = boxes[:, [1, 0, 3, 2]]
        class_ids = np.rint(class_raw.reshape(rows)[:filled]).astype(np.int64)
        scores = score_raw.reshape(rows)[:filled].astype(np.float64)
        return boxes, class_ids, scores

    @staticmethod
    def _split_detection_output(
        output: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        array = np.asarray(output)
        if array.ndim < 2 or array.shape[-1] != 7:
            raise DecodeError(f"SSD DetectionOutput must be (..., 7) rows, got {array.shape}")
        rows = array.reshape(-1, 7).astype(np.float64)
        # rows past the last detection are padded with image id -1
        rows = rows[rows[:, 0] >= 0]
        return rows[:, 3:7], np.rint(rows[:, 1]).astype(np.int64), rows[:, 2]


def build(input_spec: InputSpec, postprocess: PostprocessSpec) -> SSDDecoder:
    """A decoder for this post-processing spec (boxes are normalised, so size does not matter).

    Raises UnsupportedPostprocessError for invalid `params`.
    """
    del input_spec
    params = decoder_params(SSDParams, postprocess, "SSD")
    return SSDDecoder(
        score_threshold=postprocess.score_threshold,
        iou_threshold=postprocess.iou_threshold,
        max_detections=postprocess.max_detections,
        params=params,
    )
