"""CenterFace decoding: synthetic grids, and the real model run through OpenCV's DNN module."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.detect.centerface import CenterFaceDecoder, CenterFaceParams
from agent.detect.decoding import DecodeError, UnsupportedPostprocessError, build_decoder
from agent.detect.detector import Detector
from agent.detect.nms import iou_matrix
from agent.runtimes.base import Runtime, RuntimeProbe, TensorDetails
from controller.demo.sample_video import Placement, astronaut_frame, render_placement
from controller.release.models import fetch_model
from ota.manifest import InputSpec, PostprocessSpec

CENTERFACE_INPUT = InputSpec(
    width=640, height=480, layout="nchw", color="rgb", mean=(0, 0, 0), std=(1, 1, 1)
)


def grids(h: int = 120, w: int = 160):
    heatmap = np.zeros((1, 1, h, w), dtype=np.float32)
    scale = np.zeros((1, 2, h, w), dtype=np.float32)
    offset = np.zeros((1, 2, h, w), dtype=np.float32)
    landmarks = np.zeros((1, 10, h, w), dtype=np.float32)
    return heatmap, scale, offset, landmarks


def test_peak_decodes_to_centre_plus_offset_and_exponential_size():
    heatmap, scale, offset, landmarks = grids()
    heatmap[0, 0, 30, 40] = 0.9
    scale[0, :, 30, 40] = [np.log(20.0), np.log(10.0)]  # height 80 px, width 40 px
    offset[0, :, 30, 40] = [0.25, -0.5]

    decoded = CenterFaceDecoder(640, 480)([heatmap, scale, offset, landmarks])

    cy, cx = (30 + 0.25 + 0.5) * 4, (40 - 0.5 + 0.5) * 4
    expected = [(cx - 20) / 640, (cy - 40) / 480, (cx + 20) / 640, (cy + 40) / 480]
    np.testing.assert_allclose(decoded.boxes, [expected], atol=1e-6)
    np.testing.assert_allclose(decoded.scores, [0.9], atol=1e-6)
    assert decoded.classes.tolist() == [0]


def test_weak_peaks_and_duplicates_are_dropped():
    heatmap, scale, offset, _ = grids()
    heatmap[0, 0, 30, 40] = 0.9
    heatmap[0, 0, 30, 41] = 0.8  # same face, next cell
    heatmap[0, 0, 90, 120] = 0.4  # below the threshold
    scale[0, :, 30, 40:42] = np.log(10.0)

    decoded = CenterFaceDecoder(640, 480, score_threshold=0.5)([heatmap, scale, offset])

    assert len(decoded) == 1
    np.testing.assert_allclose(decoded.scores, [0.9], atol=1e-6)


def test_runaway_log_sizes_stay_finite():
    heatmap, scale, offset, _ = grids()
    heatmap[0, 0, 5, 5] = 0.9
    scale[0, :, 5, 5] = 1e6
    decoded = CenterFaceDecoder(640, 480)([heatmap, scale, offset])
    assert np.isfinite(decoded.boxes).all()


@pytest.mark.parametrize(
    "outputs",
    [
        [np.zeros((1, 1, 8, 8))] * 2,
        [np.zeros((1, 2, 8, 8)), np.zeros((1, 2, 8, 8)), np.zeros((1, 2, 8, 8))],
        [np.zeros((1, 1, 8, 8)), np.zeros((1, 2, 8, 8)), np.zeros((1, 2, 4, 4))],
    ],
)
def test_outputs_of_another_shape_are_refused(outputs):
    with pytest.raises(DecodeError):
        CenterFaceDecoder(32, 32)(outputs)


def test_registry_builds_it_and_checks_the_input_grid():
    decoder = build_decoder(
        CENTERFACE_INPUT, PostprocessSpec(kind="centerface", params={"stride": 4})
    )
    assert isinstance(decoder, CenterFaceDecoder)
    assert decoder.params == CenterFaceParams()
    with pytest.raises(UnsupportedPostprocessError, match="multiples of 32"):
        build_decoder(InputSpec(width=100, height=96), PostprocessSpec(kind="centerface"))
    with pytest.raises(UnsupportedPostprocessError, match="invalid CenterFace params"):
        build_decoder(CENTERFACE_INPUT, PostprocessSpec(kind="centerface", params={"strid": 4}))


class OpenCVDnnRuntime(Runtime):
    """Just enough of a runtime around cv2.dnn to run the real CenterFace model here."""

    KEY = "opencv_dnn_test"

    @classmethod
    def probe(cls) -> RuntimeProbe:
        return RuntimeProbe(cls.KEY, True, "cv2.dnn")

    def load(self, model_path: Path, *, input_shape: object = None) -> None:
        self.net = cv2.dnn.readNetFromONNX(str(model_path))
        self.names = sorted(self.net.getUnconnectedOutLayersNames())

    def input_details(self) -> TensorDetails:
        return TensorDetails("input.1", (1, 3, 480, 640), np.dtype(np.float32))

    def output_details(self) -> list[TensorDetails]:
        return [TensorDetails(name, (), np.dtype(np.float32)) for name in self.names]

    def infer(self, tensor: np.ndarray) -> list[np.ndarray]:
        self.net.setInput(tensor)
        return list(self.net.forward(self.names))

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def centerface_detector():
    runtime = OpenCVDnnRuntime()
    runtime.load(fetch_model("centerface"))
    return Detector(
        runtime, CENTERFACE_INPUT, PostprocessSpec(kind="centerface", score_threshold=0.5), ["face"]
    )


def test_real_centerface_finds_the_astronaut_face(centerface_detector):
    frame, truth = astronaut_frame((640, 480))

    detections = centerface_detector.detect(frame)

    assert len(detections) == 1
    assert detections[0].score >= 0.7
    # CenterFace boxes reach up to the hair, so they are taller than the recorded face box
    box = np.array(detections[0].box)
    assert iou_matrix(box, np.array(truth))[0, 0] >= 0.7
    assert abs(box[0] - truth[0]) < 0.01 and abs(box[2] - truth[2]) < 0.01
    assert abs(box[3] - truth[3]) < 0.01


@pytest.mark.parametrize("photo", ["coffee", "rocket"])
def test_real_centerface_finds_no_face_where_there_is_none(centerface_detector, photo):
    frame, _ = render_placement(Placement(photo), (640, 480))
    assert centerface_detector.detect(frame) == []
