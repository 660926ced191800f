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
    return Preprocessor(spec, quantization=quantization)(frame_bgr, out=out)


# frame sizes a Preprocessor keeps a plan for; tiling sees a handful, a camera one
_PLAN_CACHE_SIZE = 8


class Preprocessor:
    """`letterbox` for a stream of frames, with the plan and scratch buffers kept per frame size.

    Each frame costs a resize, a colour swap (or, for NCHW, a channel split that does it for
    free) and one pass that converts, normalises and lays the pixels out into the tensor;
    padding is written only where it lies. Results are bit for bit those of the plain formula
    in `letterbox`'s docstring. Not thread-safe: the scratch buffers are reused across calls.
    """

    def __init__(self, spec: InputSpec, *, quantization: tuple[float, int] | None = None) -> None:
        self.spec = spec
        self.shape = input_shape(spec)
        self.dtype = np.dtype(spec.dtype)
        self._nchw = spec.layout != "nhwc"
        # mean/std are given in the model's colour order, like the tensor they describe
        self._mean = np.asarray(spec.mean, dtype=np.float32).reshape(3)
        std = np.asarray(spec.std, dtype=np.float32).reshape(3)
        self._zero_point: np.float32 | None = None
        if self.dtype.kind == "f":
            self._divisor = std
        elif quantization is not None and quantization[0] != 0.0:
            self._divisor = std * np.float32(quantization[0])
            self._zero_point = np.float32(quantization[1])
        else:
            self._divisor = np.ones(3, dtype=np.float32)
        # (p - 0) / 1 is p exactly, so a float input with that normalisation is a plain copy
        self._identity = (
            self.dtype.kind == "f" and not self._mean.any() and bool(np.all(std == 1.0))
        )
        # padding holds the mean pixel, converted like any other
        mean_pixel = self._mean.copy()
        self._pad = self._finish(mean_pixel, self._mean, self._divisor)
        self._plans: dict[tuple[int, int], _Plan] = {}

    def __call__(
        self, frame_bgr: np.ndarray, *, out: np.ndarray | None = None
    ) -> tuple[np.ndarray, Transform]:
        """The input tensor for one frame, and the transform back; see `letterbox`.

        Raises PreprocessError for a frame that is not H×W×3 uint8 or an `out` that does not fit.
        """
        if frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3 or frame_bgr.dtype != np.uint8:
            raise PreprocessError(
                f"expected an HxWx3 uint8 BGR frame, got {frame_bgr.shape} {frame_bgr.dtype}"
            )
        if out is None:
            out = np.empty(self.shape, dtype=self.dtype)
        elif out.shape != self.shape or out.dtype != self.dtype:
            raise PreprocessError(
                f"output buffer {out.shape} {out.dtype}, need {self.shape} {self.dtype}"
            )
        frame_h, frame_w = frame_bgr.shape[:2]
        plan = self._plans.get((frame_w, frame_h))
        if plan is None:
            plan = self._plan(frame_w, frame_h)

        pixels = frame_bgr
        if plan.resize is not None:
            size, interpolation, resized = plan.resize
            pixels = cv2.resize(pixels, size, dst=resized, interpolation=interpolation)
        tensor = out[0]
        for region, value in plan.padding:
            tensor[region] = value
        if self._nchw:
            planes = cv2.split(pixels, plan.planes)
            for source, (target, mean, divisor, scratch) in zip(
                plan.sources, plan.jobs, strict=True
            ):
                self._convert(planes[source], tensor[target], mean, divisor, scratch)
        else:
            if plan.rgb is not None:
                pixels = cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB, dst=plan.rgb)
            target, mean, divisor, scratch = plan.jobs[0]
            rows = pixels.shape[0]
            # rows of W×3 values: one long contiguous run per row instead of runs of three
            self._convert(
                pixels.reshape(rows, -1), tensor[target].reshape(rows, -1), mean, divisor, scratch
            )
        return out, plan.transform

    def _plan(self, frame_w: int, frame_h: int) -> _Plan:
        transform = plan_transform(frame_w, frame_h, self.spec)
        content_w, content_h = int(transform.content_width), int(transform.content_height)
        left, top = int(transform.left), int(transform.top)
        resize = None
        if (content_w, content_h) != (frame_w, frame_h):
            shrinking = content_w < frame_w or content_h < frame_h
            resize = (
                (content_w, content_h),
                cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR,
                np.empty((content_h, content_w, 3), dtype=np.uint8),
            )
        rows = slice(top, top + content_h)
        cols = slice(left, left + content_w)
        quantised = self._zero_point is not None

        padding: list[tuple[tuple[slice, ...], np.ndarray]] = []
        bands = [
            (slice(0, top), slice(None)),
            (slice(top + content_h, self.spec.height), slice(None)),
            (rows, slice(0, left)),
            (rows, slice(left + content_w, self.spec.width)),
        ]
        pad = self._pad.reshape(3, 1, 1) if self._nchw else self._pad
        for band_rows, band_cols in bands:
            if _empty(band_rows, self.spec.height) or _empty(band_cols, self.spec.width):
                continue
            region = (slice(None), band_rows, band_cols) if self._nchw else (band_rows, band_cols)
            padding.append((region, pad))

        jobs: list[_Job] = []
        planes: tuple[np.ndarray, ...] = ()
        sources: tuple[int, ...] = ()
        rgb = None
        if self._nchw:
            planes = tuple(np.empty((content_h, content_w), np.uint8) for _ in range(3))
            # the split hands back BGR planes; an RGB model's channel c reads plane 2 - c
            sources = (2, 1, 0) if self.spec.color == "rgb" else (0, 1, 2)
            for channel in range(3):
                scratch = np.empty((content_h, content_w), np.float32) if quantised else None
                jobs.append(
                    (
                        (channel, rows, cols),
                        _uniform(self._mean[channel : channel + 1]),
                        _uniform(self._divisor[channel : channel + 1]),
                        scratch,
                    )
                )
        else:
            if self.spec.color == "rgb":
                rgb = np.empty((content_h, content_w, 3), dtype=np.uint8)
            scratch = np.empty((content_h, content_w * 3), np.float32) if quantised else None
            jobs.append(
                (
                    (rows, cols),
                    _row_values(self._mean, content_w),
                    _row_values(self._divisor, content_w),
                    scratch,
                )
            )

        plan = _Plan(transform, resize, rgb, planes, sources, tuple(jobs), tuple(padding))
        if len(self._plans) >= _PLAN_CACHE_SIZE:
            self._plans.clear()
        self._plans[(frame_w, frame_h)] = plan
        return plan

    def _convert(
        self,
        pixels: np.ndarray,
        out: np.ndarray,
        mean: np.ndarray,
        divisor: np.ndarray,
        scratch: np.ndarray | None,
    ) -> None:
        """Write uint8 model-order pixels into `out` (same shape) as the input's values."""
        if self.dtype.kind == "f":
            if self._identity:
                np.copyto(out, pixels)
            else:
                np.subtract(pixels, mean, out=out)
                np.divide(out, divisor, out=out)
        elif scratch is not None:
            np.copyto(scratch, pixels)
            np.copyto(out, self._finish(scratch, mean, divisor), casting="unsafe")
        elif self.dtype == np.int8:
            np.subtract(pixels, np.int16(128), out=out, casting="unsafe")
        else:
            np.copyto(out, pixels)

    def _finish(self, values: np.ndarray, mean: np.ndarray, divisor: np.ndarray) -> np.ndarray:
        """The input's values for float32 pixels (overwritten), still as float32."""
        if self.dtype.kind == "f":
            values -= mean
            values /= divisor
            return values
        if self._zero_point is not None:
            values -= mean
            values /= divisor
            values += self._zero_point
        elif self.dtype == np.int8:
            values -= np.float32(128.0)
        low, high = _INT_RANGE[self.spec.dtype]
        np.rint(values, out=values)
        np.clip(values, low, high, out=values)
        return values


# where in the tensor, the mean and divisor to apply, and a float scratch for quantised inputs
_Job = tuple[tuple[int | slice, ...], np.ndarray, np.ndarray, np.ndarray | None]


@dataclass(frozen=True)
class _Plan:
    """What one frame size needs: the transform, the resize and the scratch buffers."""

    transform: Transform
    # (size, interpolation, destination), or None when the frame already has the content size
    resize: tuple[tuple[int, int], int, np.ndarray] | None
    rgb: np.ndarray | None  # NHWC colour-swap destination
    planes: tuple[np.ndarray, ...]  # NCHW split destinations
    sources: tuple[int, ...]  # NCHW: the plane each channel reads
    jobs: tuple[_Job, ...]
    padding: tuple[tuple[tuple[slice, ...], np.ndarray], ...]


def _uniform(values: np.ndarray) -> np.ndarray:
    """One value as a 0-d array, which numpy broadcasts without a per-element stride."""
    return values.reshape(())


def _row_values(per_channel: np.ndarray, width: int) -> np.ndarray:
    """Per-channel values laid along a row of `width` pixels; one value when all agree."""
    if bool(np.all(per_channel == per_channel[0])):
        return per_channel[:1].reshape(())
    return np.tile(per_channel, width)


def _empty(band: slice, length: int) -> bool:
    start, stop, _ = band.indices(length)
    return stop <= start
