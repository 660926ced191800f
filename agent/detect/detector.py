"""One frame in, detections out: preprocess → infer → decode → map back to the frame."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from agent.detect.decoding import Decoder, build_decoder
from agent.detect.preprocess import Preprocessor, input_shape
from agent.runtimes.base import Runtime, TensorDetails
from ota.manifest import InputSpec, PostprocessSpec

Box = tuple[float, float, float, float]


class DetectorConfigError(ValueError):
    """The declared input spec or labels do not fit the loaded model."""


@dataclass(frozen=True)
class FrameDetection:
    """One detected object; the box is x1, y1, x2, y2 normalised to the frame, within [0, 1]."""

    label: str
    score: float
    box: Box


@dataclass(frozen=True)
class StageTimes:
    """Wall time of each stage of the last `detect` call, in milliseconds."""

    preprocess_ms: float = 0.0
    infer_ms: float = 0.0
    postprocess_ms: float = 0.0

    @property
    def total_ms(self) -> float:
        return self.preprocess_ms + self.infer_ms + self.postprocess_ms


class Detector:
    """Runs one loaded model on frames, as its bundle manifest declares.

    Not thread-safe: it reuses one input buffer across frames; use one per pipeline.
    """

    def __init__(
        self,
        runtime: Runtime,
        input_spec: InputSpec,
        postprocess_spec: PostprocessSpec,
        labels: Sequence[str],
    ) -> None:
        """Raises DetectorConfigError when the spec does not fit the model the runtime loaded,
        and UnsupportedPostprocessError for an unknown post-processing kind."""
        if not labels:
            raise DetectorConfigError("a detector needs at least one label")
        details = runtime.input_details()
        _check_input(details, input_spec)
        self.runtime = runtime
        self.input_spec = input_spec
        self.postprocess_spec = postprocess_spec
        self.labels = tuple(labels)
        self._quantization = details.quantization if details.quantized else None
        self._output_quantization = [o.quantization for o in runtime.output_details()]
        self._decoder: Decoder = build_decoder(input_spec, postprocess_spec)
        # from the spec, not the model: a model with free dimensions reports them as -1
        # the runtime's own buffer: a worker's lies in shared memory, so the frame is not copied
        self._input = runtime.input_buffer(input_shape(input_spec), details.dtype)
        self._preprocess = Preprocessor(input_spec, quantization=self._quantization)
        self.last_times = StageTimes()

    def detect(self, frame_bgr: np.ndarray) -> list[FrameDetection]:
        """Detections in one BGR frame, by falling score.

        Raises PreprocessError for a malformed frame and InferenceError or DecodeError when the
        model fails on it.
        """
        t0 = time.perf_counter()
        tensor, transform = self._preprocess(frame_bgr, out=self._input)
        t1 = time.perf_counter()
        outputs = self.runtime.infer(tensor)
        t2 = time.perf_counter()
        outputs = [
            _dequantize(o, q) for o, q in zip(outputs, self._output_quantization, strict=True)
        ]
        decoded = self._decoder(outputs)
        boxes = np.clip(transform.boxes_to_frame(decoded.boxes), 0.0, 1.0)
        detections = []
        for box, score, cls in zip(boxes, decoded.scores, decoded.classes, strict=True):
            # a box that lay wholly in the letterbox padding collapses to nothing when clipped
            if box[2] <= box[0] or box[3] <= box[1]:
                continue
            detections.append(
                FrameDetection(
                    label=self._label(int(cls)),
                    score=float(score),
                    box=(float(box[0]), float(box[1]), float(box[2]), float(box[3])),
                )
            )
        t3 = time.perf_counter()
        self.last_times = StageTimes((t1 - t0) * 1000.0, (t2 - t1) * 1000.0, (t3 - t2) * 1000.0)
        return detections

    def _label(self, cls: int) -> str:
        if 0 <= cls < len(self.labels):
            return self.labels[cls]
        return f"class_{cls}"


def _check_input(details: TensorDetails, spec: InputSpec) -> None:
    expected = input_shape(spec)
    # a free (-1) dimension of the model takes whatever size the spec declares
    fits = len(details.shape) == len(expected) and all(
        d == e or d < 0 for d, e in zip(details.shape, expected, strict=True)
    )
    if not fits:
        raise DetectorConfigError(
            f"model input {details.shape} does not match the declared {spec.layout} "
            f"{spec.width}x{spec.height} input {expected}"
        )
    if details.dtype != np.dtype(spec.dtype):
        raise DetectorConfigError(
            f"model input is {details.dtype}, the input spec declares {spec.dtype}"
        )


def _dequantize(output: np.ndarray, quantization: tuple[float, int]) -> np.ndarray:
    scale, zero_point = quantization
    if scale == 0.0:
        return output
    return (output.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)
