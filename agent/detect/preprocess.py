"""Frame → model input tensor, and the transform that maps model coordinates back to the frame.

Coordinates in this package are normalised: (0, 0) is the top-left corner of an image and
(1, 1) its bottom-right corner, x before y. A `Transform` maps boxes normalised to the model
input (what decoders produce) to boxes normalised to the camera frame (what is reported).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ota.manifest import InputSpec

# Element range of integer input types, for quantised inputs.
_INT_RANGE = {"uint8": (0, 255), "int8": (-128, 127)}


class PreprocessError(ValueError):
    """The frame or the output buffer does not fit the input spec."""


@dataclass(frozen=True)
class Transform:
    """Where the frame landed inside the model input, in model-input pixels.

    The frame's content occupies the rectangle (`left`, `top`, `left + content_width`,
    `top + content_height`) of an `input_width` × `input_height` input; the rest is padding.
    """

    input_width: int
    input_height: int
    left: float
    top: float
    content_width: float
    content_height: float

    def boxes_to_frame(self, boxes: np.ndarray) -> np.ndarray:
        """Map (..., 4) x1, y1, x2, y2 boxes normalised to the input into frame-normalised ones."""
        out = np.array(boxes, dtype=np.float64)
        out[..., 0::2] = (out[..., 0::2] * self.input_width - self.left) / self.content_width
        out[..., 1::2] = (out[..., 1::2] * self.input_height - self.top) / self.content_height
        return out

    def boxes_from_frame(self, boxes: np.ndarray) -> np.ndarray:
        """Inverse of `boxes_to_frame`: frame-normalised boxes into input-normalised ones."""
        out = np.array(boxes, dtype=np.float64)
        out[..., 0::2] = (out[..., 0::2] * self.content_width + self.left) / self.input_width
        out[..., 1::2] = (out[..., 1::2] * self.content_height + self.top) / self.input_height
        return out


def plan_transform(frame_width: int, frame_height: int, spec: InputSpec) -> Transform:
    """Where a frame of this size goes in the model input (letterboxed or stretched).

    Raises PreprocessError for an empty frame.
    """
    if frame_width <= 0 or frame_height <= 0:
        raise PreprocessError(f"empty frame {frame_width}x{frame_height}")
    if not spec.letterbox:
        return Transform(spec.width, spec.height, 0, 0, spec.width, spec.height)
    scale = min(spec.width / frame_width, spec.height / frame_height)
    content_w = max(1, min(spec.width, round(frame_width * scale)))
    content_h = max(1, min(spec.height, round(frame_height * scale)))
    left = (spec.width - content_w) // 2
    top = (spec.height - content_h) // 2
    return Transform(spec.width, spec.height, left, top, content_w, content_h)


def input_shape(spec: InputSpec) -> tuple[int, int, int, int]:
    """The batch-of-one tensor shape the spec describes."""
    if spec.layout == "nhwc":
        return (1, spec.height, spec.width, 3)
    return (1, 3, spec.height, spec.width)


def letterbox(
    frame_bgr: np.ndarray,
    spec: InputSpec,
    *,
    quantization: tuple[float, int] | None = None,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, Transform]:
    """Turn a BGR uint8 frame into the model's input tensor and the transform back.

    Letterboxes (aspect kept, padding centred) when `spec.letterbox`, else stretches. Padding is
    filled with the per-channel mean, so a float input sees zeros there. Float inputs are
    normalised as (pixel - mean) / std. Integer inputs are quantised from that normalised value
    with `quantization` (scale, zero point) when given; without it uint8 gets raw pixels and int8
    gets pixels - 128. `out`, when given, must have the tensor's shape and dtype and is filled
    in place, so a pipeline can reuse one buffer for every frame.

    Raises PreprocessError for a frame that is not H×W×3 uint8 or an `out` that does not fit.
    """
    if frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3 or frame_bgr.dtype != np.uint8:
        raise PreprocessError(
            f"expected an HxWx3 uint8 BGR frame, got {frame_bgr.shape} {frame_bgr.dtype}"
        )
    frame_h, frame_w = frame_bgr.shape[:2]
    transform = plan_transform(frame_w, frame_h, spec)
    shape = input_shape(spec)
    dtype = np.dtype(spec.dtype)
    if out is None:
        out = np.empty(shape, dtype=dtype)
    elif out.shape != shape or out.dtype != dtype:
        raise PreprocessError(f"output buffer {out.shape} {out.dtype}, need {shape} {dtype}")

    content_w, content_h = int(transform.content_width), int(transform.content_height)
    shrinking = content_w < frame_w or content_h < frame_h
    resized = cv2.resize(
        frame_bgr,
        (content_w, content_h),
        interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR,
    )
    if spec.color == "rgb":
        resized = cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)

    # mean/std are given in the model's colour order, like the tensor they describe
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    canvas = np.empty((spec.height, spec.width, 3), dtype=np.float32)
    if (content_w, content_h) != (spec.width, spec.height):
        canvas[...] = mean
    left, top = int(transform.left), int(transform.top)
    canvas[top : top + content_h, left : left + content_w] = resized

    if dtype.kind == "f":
        canvas -= mean
        canvas /= std
    else:
        if quantization is not None and quantization[0] != 0.0:
            scale, zero_point = quantization
            canvas -= mean
            canvas /= std * np.float32(scale)
            canvas += np.float32(zero_point)
        elif spec.dtype == "int8":
            canvas -= np.float32(128.0)
        low, high = _INT_RANGE[spec.dtype]
        np.rint(canvas, out=canvas)
        np.clip(canvas, low, high, out=canvas)

    if spec.layout == "nhwc":
        out[0] = canvas
    else:
        out[0] = canvas.transpose(2, 0, 1)
    return out, transform
