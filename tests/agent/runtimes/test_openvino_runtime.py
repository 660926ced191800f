"""The OpenVINO plugin on the real models, and its agreement with LiteRT and ONNX Runtime.

BlazeFace (.tflite) and CenterFace (.onnx) are run both as their source files and as the IR a
bundle build generates from them; detections on real photos must pair up one to one with the
runtime the model was published for (IoU ≥ 0.9, scores within 0.05).
"""

from pathlib import Path

import numpy as np
import pytest

from agent.detect.detector import Detector
from agent.detect.nms import iou_matrix
from agent.detect.preprocess import input_shape
from agent.runtimes.base import (
    InferenceError,
    ModelLoadError,
    Runtime,
    RuntimeOptions,
    RuntimeUnavailableError,
    probe_runtime,
)
from agent.runtimes.litert import LiteRTRuntime
from agent.runtimes.onnx import OnnxRuntime
from agent.runtimes.openvino import OpenVINORuntime, myriad_note, release
from controller.demo.sample_video import astronaut_frame
from controller.release.models import default_cache_dir
from controller.release.recipes import VARIANT_CACHE, example_spec
from controller.release.variants import batch_shape, convert_to_openvino
from ota.build import BundleSpec
from tests.agent.consistency import (
    CANDIDATE_THRESHOLD,
    FRAME_SIZE,
    PHOTOS,
    THRESHOLD_MARGIN,
    assert_paired,
)

VGA_INPUT = (1, 3, 480, 640)


@pytest.fixture(scope="session")
def generated_ir(blazeface_model, centerface_model) -> dict[str, Path]:
    """IR made from each source model as a bundle build makes it (cached across runs)."""
    cache = default_cache_dir() / VARIANT_CACHE
    out = {}
    for name, model in (("blazeface-short", blazeface_model), ("centerface", centerface_model)):
        spec = example_spec(name)
        out[name] = convert_to_openvino(
            model, cache, precision="fp16", input_shape=batch_shape(spec.input)
        ).xml
    return out


@pytest.fixture
def centerface_runtime(centerface_model):
    runtime = OpenVINORuntime(num_threads=1)
    runtime.load(centerface_model, input_shape=VGA_INPUT)
    yield runtime
    runtime.close()


def test_probe_reports_the_version_devices_and_the_end_of_myriad():
    probe = probe_runtime("openvino")
    assert probe.available is True, probe.reason
    assert "OpenVINO 20" in probe.reason
    assert "CPU" in probe.devices
    assert "MYRIAD (NCS2) is not supported after OpenVINO 2022.3" in probe.reason


def test_myriad_note_depends_on_the_release_line():
    assert release("2026.4.1-22982-e213a147257-releases/2026/4") == (2026, 4)
    assert "not supported" in myriad_note("2023.0.0")
    assert "is supported" in myriad_note("2022.3.1")
    assert "is supported" in myriad_note("2021.4.2")


def test_myriad_is_refused_with_the_reason_on_this_version(blazeface_model):
    runtime = OpenVINORuntime.create(options=RuntimeOptions(device="MYRIAD"))
    with pytest.raises(RuntimeUnavailableError, match=r"MYRIAD.*not available.*2022\.3"):
        runtime.load(blazeface_model)


def test_devices_outside_openvino_and_bad_thread_counts_are_refused():
    with pytest.raises(RuntimeUnavailableError, match="EDGETPU"):
        OpenVINORuntime.create(options=RuntimeOptions(device="EDGETPU"))
    with pytest.raises(ValueError, match="device"):
        OpenVINORuntime(device="cpu")
    with pytest.raises(ValueError, match="num_threads"):
        OpenVINORuntime(num_threads=0)
    assert OpenVINORuntime.create().device == "CPU"


def test_blazeface_tflite_loads_with_name_sorted_outputs(blazeface_model):
    with OpenVINORuntime(num_threads=1) as runtime:
        runtime.load(blazeface_model)
        details = runtime.input_details()
        assert (details.shape, details.dtype) == ((1, 128, 128, 3), np.float32)
        outputs = runtime.output_details()
        assert [o.name for o in outputs] == ["classificators", "regressors"]
        result = runtime.infer(np.zeros((1, 128, 128, 3), np.float32))
        assert [r.shape for r in result] == [(1, 896, 1), (1, 896, 16)]


def test_centerface_placeholder_input_is_reshaped_to_the_bundle_size(centerface_runtime):
    assert centerface_runtime.input_details().shape == VGA_INPUT
    outputs = centerface_runtime.output_details()
    assert [o.name for o in outputs] == ["537", "538", "539", "540"]
    assert outputs[0].shape == (1, 1, 120, 160)


def test_without_an_input_shape_the_declared_placeholder_is_used(centerface_model):
    with OpenVINORuntime(num_threads=1) as runtime:
        runtime.load(centerface_model)
        assert runtime.input_details().shape == (10, 3, 32, 32)


def test_free_dimensions_take_any_size(centerface_model):
    with OpenVINORuntime(num_threads=1) as runtime:
        runtime.load(centerface_model, input_shape=(1, 3, -1, -1))
        assert runtime.input_details().shape == (1, 3, -1, -1)
        assert runtime.infer(np.zeros((1, 3, 64, 96), np.float32))[0].shape == (1, 1, 16, 24)
        assert runtime.infer(np.zeros((1, 3, 128, 160), np.float32))[0].shape == (1, 1, 32, 40)
        with pytest.raises(InferenceError, match="does not fit"):
            runtime.infer(np.zeros((1, 1, 64, 96), np.float32))


def test_outputs_survive_the_next_inference_on_the_reused_request(centerface_runtime):
    kept = centerface_runtime.infer(np.zeros(VGA_INPUT, np.float32))
    snapshot = [o.copy() for o in kept]
    other = centerface_runtime.infer(np.full(VGA_INPUT, 200.0, np.float32))
    assert not np.array_equal(other[1], snapshot[1])
    for a, b in zip(kept, snapshot, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("shape", "dtype"), [(VGA_INPUT, np.float64), ((1, 480, 640, 3), np.float32)]
)
def test_input_of_the_wrong_shape_or_type_is_refused(centerface_runtime, shape, dtype):
    with pytest.raises(InferenceError, match="does not fit"):
        centerface_runtime.infer(np.zeros(shape, dtype))


def test_bad_files_fail_to_load_and_keep_the_loaded_model(centerface_runtime, tmp_path):
    bogus = tmp_path / "bogus.onnx"
    bogus.write_bytes(b"not a protobuf" * 100)
    with pytest.raises(ModelLoadError, match=r"bogus\.onnx"):
        centerface_runtime.load(bogus)
    with pytest.raises(ModelLoadError, match="reads"):
        centerface_runtime.load(tmp_path / "graph.pb")
    assert len(centerface_runtime.infer(np.zeros(VGA_INPUT, np.float32))) == 4


def test_nothing_runs_before_load_or_after_close(blazeface_model):
    runtime = OpenVINORuntime()
    with pytest.raises(ModelLoadError):
        runtime.input_details()
    with pytest.raises(InferenceError):
        runtime.infer(np.zeros((1, 128, 128, 3), np.float32))
    runtime.load(blazeface_model)
    runtime.close()
    with pytest.raises(ModelLoadError):
        runtime.output_details()
    runtime.close()


def _reference(key: str, model: Path, spec: BundleSpec) -> Runtime:
    if key == "litert":
        litert = LiteRTRuntime(num_threads=1)
        litert.load(model)
        return litert
    onnx = OnnxRuntime(num_threads=1, providers=["CPUExecutionProvider"])
    onnx.load(model, input_shape=input_shape(spec.input))
    return onnx


# (bundle, reference runtime, OpenVINO model: the source file or the generated IR)
PAIRS = [
    ("blazeface-short", "litert", "source"),
    ("blazeface-short", "litert", "ir"),
    ("centerface", "onnx", "source"),
    ("centerface", "onnx", "ir"),
]


@pytest.fixture(scope="module", params=PAIRS, ids=["-".join(p) for p in PAIRS])
def detector_pair(request, blazeface_model, centerface_model, generated_ir):
    name, reference_key, form = request.param
    spec = example_spec(name)
    source = blazeface_model if name == "blazeface-short" else centerface_model
    reference = _reference(reference_key, source, spec)
    openvino = OpenVINORuntime(num_threads=1)
    model = generated_ir[name] if form == "ir" else source
    openvino.load(model, input_shape=input_shape(spec.input))
    # a low threshold with no cap on the count makes every photo yield candidates to compare
    weak = spec.postprocess.model_copy(
        update={"score_threshold": CANDIDATE_THRESHOLD, "max_detections": 1000}
    )
    try:
        yield {
            post: tuple(Detector(r, spec.input, pp, spec.labels) for r in (reference, openvino))
            for post, pp in (("bundle", spec.postprocess), ("weak", weak))
        }
    finally:
        reference.close()
        openvino.close()


def test_openvino_finds_the_astronaut_face_like_the_reference(detector_pair):
    frame, truth = astronaut_frame(FRAME_SIZE)
    for detector in detector_pair["bundle"]:
        faces = detector.detect(frame)
        assert len(faces) == 1, (detector.runtime.KEY, faces)
        assert iou_matrix(np.array(faces[0].box), np.array(truth))[0, 0] >= 0.5


@pytest.mark.parametrize("photo", sorted(PHOTOS))
def test_openvino_agrees_with_the_reference_runtime(detector_pair, photo):
    reference, openvino = detector_pair["bundle"]
    a, b = reference.detect(PHOTOS[photo]), openvino.detect(PHOTOS[photo])
    assert len(a) == len(b), (a, b)
    assert assert_paired(a, b) == 2 * len(a)


@pytest.mark.parametrize("photo", sorted(PHOTOS))
def test_openvino_agrees_on_weak_candidates_too(detector_pair, photo):
    reference, openvino = detector_pair["weak"]
    a, b = reference.detect(PHOTOS[photo]), openvino.detect(PHOTOS[photo])
    assert a and b, "the low threshold should leave candidates on every photo"
    assert assert_paired(a, b, floor=CANDIDATE_THRESHOLD + THRESHOLD_MARGIN) >= 1
