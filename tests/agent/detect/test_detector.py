"""The detector end to end: real BlazeFace on LiteRT, on frames with known faces."""

from pathlib import Path

import numpy as np
import pytest

from agent.detect.detector import Detector, DetectorConfigError, FrameDetection
from agent.detect.nms import iou_matrix
from agent.detect.preprocess import PreprocessError
from agent.runtimes.base import Runtime, RuntimeProbe, TensorDetails
from controller.demo.sample_video import Placement, astronaut_frame, render_placement
from ota.manifest import InputSpec, PostprocessSpec


def iou(a, b) -> float:
    return float(iou_matrix(np.array([a]), np.array([b]))[0, 0])


def test_one_face_is_found_on_the_astronaut_where_it_is(face_detector):
    frame, truth = astronaut_frame((640, 480))

    detections = face_detector.detect(frame)

    assert len(detections) == 1
    face = detections[0]
    assert face.label == "face"
    assert face.score >= 0.7
    assert iou(face.box, truth) >= 0.75


@pytest.mark.parametrize("size", [(640, 480), (800, 600), (480, 640), (512, 512), (320, 240)])
def test_face_is_found_whatever_the_frame_shape(face_detector, size):
    frame, truth = astronaut_frame(size)
    detections = face_detector.detect(frame)
    assert len(detections) == 1
    assert iou(detections[0].box, truth) >= 0.7


@pytest.mark.parametrize("photo", ["coffee", "rocket"])
def test_no_face_is_found_on_photos_without_one(face_detector, photo):
    frame, faces = render_placement(Placement(photo), (640, 480))
    assert faces == ()
    assert face_detector.detect(frame) == []


def test_blank_frame_has_no_face(face_detector):
    assert face_detector.detect(np.zeros((480, 640, 3), dtype=np.uint8)) == []


def test_boxes_are_normalised_to_the_frame_and_clipped(face_detector):
    frame, _ = render_placement(
        Placement("astronaut", zoom=2.0, anchor=(0.44, 0.25), at=(0.5, 0.1)), (640, 480)
    )
    detections = face_detector.detect(frame)
    assert detections, "a face cut by the top edge is still found"
    for detection in detections:
        x1, y1, x2, y2 = detection.box
        assert 0.0 <= x1 < x2 <= 1.0
        assert 0.0 <= y1 < y2 <= 1.0
    assert min(d.box[1] for d in detections) == 0.0


def test_stage_times_are_measured(face_detector):
    frame, _ = astronaut_frame((640, 480))
    face_detector.detect(frame)
    times = face_detector.last_times
    assert times.preprocess_ms > 0 and times.infer_ms > 0 and times.postprocess_ms > 0
    assert times.total_ms == pytest.approx(
        times.preprocess_ms + times.infer_ms + times.postprocess_ms
    )


def test_malformed_frame_is_refused(face_detector):
    with pytest.raises(PreprocessError):
        face_detector.detect(np.zeros((480, 640), dtype=np.uint8))


@pytest.mark.parametrize(
    "spec",
    [
        InputSpec(width=256, height=256),
        InputSpec(width=128, height=128, layout="nchw"),
        InputSpec(width=128, height=128, dtype="uint8"),
    ],
)
def test_input_spec_that_does_not_fit_the_model_is_refused(litert_runtime, spec):
    with pytest.raises(DetectorConfigError):
        Detector(litert_runtime, spec, PostprocessSpec(kind="blazeface"), ["face"])


def test_detector_needs_labels(litert_runtime, blazeface_input, blazeface_postprocess):
    with pytest.raises(DetectorConfigError, match="label"):
        Detector(litert_runtime, blazeface_input, blazeface_postprocess, [])


class ScriptedRuntime(Runtime):
    """A runtime that returns fixed uint8-quantised BlazeFace outputs, for the mapping logic."""

    KEY = "scripted"

    def __init__(self, outputs: list[np.ndarray], quantization: tuple[float, int]) -> None:
        self.outputs = outputs
        self.quantization = quantization
        self.inputs: list[np.ndarray] = []

    @classmethod
    def probe(cls) -> RuntimeProbe:
        return RuntimeProbe(cls.KEY, True, "test double")

    def load(self, model_path: Path, *, input_shape: object = None) -> None:
        pass

    def input_details(self) -> TensorDetails:
        return TensorDetails("input", (1, 128, 128, 3), np.dtype(np.float32))

    def output_details(self) -> list[TensorDetails]:
        return [
            TensorDetails("classificators", (1, 896, 1), np.dtype(np.uint8), self.quantization),
            TensorDetails("regressors", (1, 896, 16), np.dtype(np.uint8), self.quantization),
        ]

    def infer(self, tensor: np.ndarray) -> list[np.ndarray]:
        self.inputs.append(tensor.copy())
        return [o.copy() for o in self.outputs]

    def close(self) -> None:
        pass


def test_quantised_outputs_are_dequantised_and_boxes_in_the_padding_are_dropped(
    blazeface_input, blazeface_postprocess
):
    # scale 0.5, zero point 128: stored q means (q - 128) / 2
    def q(value: float) -> int:
        return round(value * 2 + 128)

    logits = np.full((1, 896, 1), q(-60), dtype=np.uint8)
    regressors = np.full((1, 896, 16), q(0), dtype=np.uint8)
    # anchor 2 * (16 * 8 + 8): stride-8 cell (8, 8), centre (0.53125, 0.53125) of the input
    logits[0, 256 + 16, 0] = q(5.0)
    regressors[0, 256 + 16, :4] = [q(0), q(0), q(32), q(32)]
    # anchor in the first row of cells: centre y = 1/32, inside the top padding of a 4:3 frame
    logits[0, 4, 0] = q(5.0)
    regressors[0, 4, :4] = [q(0), q(0), q(8), q(8)]
    runtime = ScriptedRuntime([logits, regressors], (0.5, 128))
    detector = Detector(runtime, blazeface_input, blazeface_postprocess, ["face"])

    detections = detector.detect(np.zeros((480, 640, 3), dtype=np.uint8))

    # input 128x128 holds the 640x480 frame as 128x96 from y=16: frame y = (y_in * 128 - 16) / 96
    cx, cy, half = 8.5 / 16, 8.5 / 16, 16 / 128
    expected = (
        cx - half,
        (((cy - half) * 128) - 16) / 96,
        cx + half,
        (((cy + half) * 128) - 16) / 96,
    )
    assert len(detections) == 1
    assert detections[0].label == "face"
    assert detections[0].score == pytest.approx(1 / (1 + np.exp(-5.0)))
    np.testing.assert_allclose(detections[0].box, expected, atol=1e-6)
    assert runtime.inputs[0].shape == (1, 128, 128, 3)


def test_class_without_a_label_gets_a_numbered_name(blazeface_input, blazeface_postprocess):
    detector = Detector(
        ScriptedRuntime([np.zeros((1, 896, 1)), np.zeros((1, 896, 16))], (0.0, 0)),
        blazeface_input,
        blazeface_postprocess,
        ["face"],
    )
    assert detector._label(0) == "face"
    assert detector._label(3) == "class_3"


def test_detection_is_a_plain_value():
    detection = FrameDetection(label="face", score=0.9, box=(0.1, 0.2, 0.3, 0.4))
    assert detection == FrameDetection("face", 0.9, (0.1, 0.2, 0.3, 0.4))
    with pytest.raises(AttributeError):
        detection.score = 1.0  # type: ignore[misc]
