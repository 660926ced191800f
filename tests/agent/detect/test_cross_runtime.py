"""One bundle, several runtimes, the same detections.

Each model runs through `Detector` built from its shipped bundle spec on every runtime that has
a variant for it; detections on real photos must pair up one to one (IoU ≥ 0.9, scores within
0.05). A second pass with a low score threshold and no cap on the count makes every photo yield candidates, so the
comparison also covers photos without a face.
"""

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from agent.detect.detector import Detector
from agent.detect.nms import iou_matrix
from agent.detect.preprocess import input_shape
from agent.runtimes.base import Runtime
from agent.runtimes.litert import LiteRTRuntime
from agent.runtimes.onnx import OnnxRuntime
from agent.runtimes.opencv import OpenCVRuntime
from controller.demo.sample_video import astronaut_frame
from controller.release.recipes import example_spec
from ota.build import BundleSpec
from tests.agent.consistency import (
    CANDIDATE_THRESHOLD,
    FRAME_SIZE,
    PHOTOS,
    THRESHOLD_MARGIN,
    assert_paired,
)


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
    assert assert_paired(a, b) == 2 * len(a)


@pytest.mark.parametrize("pair", ["centerface_candidates", "blazeface_candidates"])
@pytest.mark.parametrize("photo", sorted(PHOTOS))
def test_runtimes_agree_on_weak_candidates_too(request, pair, photo):
    first, second = request.getfixturevalue(pair)
    a, b = first.detect(PHOTOS[photo]), second.detect(PHOTOS[photo])

    assert a and b, "the low threshold should leave candidates on every photo"
    assert assert_paired(a, b, floor=CANDIDATE_THRESHOLD + THRESHOLD_MARGIN) >= 1
