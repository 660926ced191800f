"""The OpenCV DNN plugin on the real CenterFace (ONNX) and BlazeFace (TFLite) models."""

import cv2
import numpy as np
import pytest

from agent.runtimes.base import InferenceError, ModelLoadError, probe_runtime
from agent.runtimes.opencv import OpenCVRuntime, tflite_supported

CENTERFACE_OUTPUTS = ["537", "538", "539", "540"]
VGA_INPUT = (1, 3, 480, 640)
BLAZEFACE_INPUT = (1, 128, 128, 3)


@pytest.fixture
def runtime(centerface_model):
    runtime = OpenCVRuntime(num_threads=1)
    runtime.load(centerface_model, input_shape=VGA_INPUT)
    yield runtime
    runtime.close()


def test_probe_reports_opencv_and_both_model_formats():
    probe = probe_runtime("opencv")
    assert probe.key == "opencv"
    assert probe.available is True
    assert cv2.__version__ in probe.reason
    # the OpenCV wheel this project installs is built with FlatBuffers
    assert tflite_supported(cv2) is True
    assert "ONNX and TFLite" in probe.reason


def test_onnx_model_reports_its_input_and_name_sorted_outputs(runtime):
    details = runtime.input_details()
    assert (details.name, details.shape, details.dtype) == ("input.1", VGA_INPUT, np.float32)
    outputs = runtime.output_details()
    assert [o.name for o in outputs] == CENTERFACE_OUTPUTS
    assert [o.shape for o in outputs] == [
        (1, 1, 120, 160),
        (1, 2, 120, 160),
        (1, 2, 120, 160),
        (1, 10, 120, 160),
    ]


def test_without_an_input_shape_the_onnx_declared_one_is_used(centerface_model):
    runtime = OpenCVRuntime()
    runtime.load(centerface_model)
    assert runtime.input_details().shape == (10, 3, 32, 32)


def test_infer_returns_outputs_in_the_declared_order_and_repeats_exactly(runtime):
    tensor = np.random.default_rng(5).uniform(0, 255, size=VGA_INPUT).astype(np.float32)

    first = runtime.infer(tensor)
    second = runtime.infer(tensor)

    assert [o.shape for o in first] == [o.shape for o in runtime.output_details()]
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)


def test_outputs_survive_the_next_inference(runtime):
    kept = runtime.infer(np.zeros(VGA_INPUT, dtype=np.float32))
    snapshot = [o.copy() for o in kept]

    other = runtime.infer(np.full(VGA_INPUT, 200.0, dtype=np.float32))

    assert not np.array_equal(other[1], snapshot[1])
    for a, b in zip(kept, snapshot, strict=True):
        np.testing.assert_array_equal(a, b)


def test_free_dimensions_take_any_size(centerface_model):
    runtime = OpenCVRuntime()
    runtime.load(centerface_model, input_shape=(1, 3, -1, -1))

    assert runtime.input_details().shape == (1, 3, -1, -1)
    assert runtime.output_details()[0].shape == ()  # unknown until a size is given
    assert runtime.infer(np.zeros((1, 3, 64, 96), dtype=np.float32))[0].shape == (1, 1, 16, 24)


def test_tflite_model_takes_nhwc_and_returns_both_outputs_in_name_order(blazeface_model):
    runtime = OpenCVRuntime(num_threads=1)
    runtime.load(blazeface_model, input_shape=BLAZEFACE_INPUT)

    assert runtime.input_details().shape == BLAZEFACE_INPUT
    assert [o.name for o in runtime.output_details()] == ["classificators", "regressors"]
    tensor = np.random.default_rng(7).uniform(-1, 1, size=BLAZEFACE_INPUT).astype(np.float32)
    outputs = runtime.infer(tensor)
    assert [o.shape for o in outputs] == [(1, 896, 1), (1, 896, 16)]
    # the NHWC input really is transposed: a transposed-back input gives other outputs
    flipped = runtime.infer(np.ascontiguousarray(tensor.transpose(0, 2, 1, 3)))
    assert not np.allclose(flipped[1], outputs[1])


def test_tflite_model_without_an_input_shape_takes_any_nhwc_size(blazeface_model):
    runtime = OpenCVRuntime()
    runtime.load(blazeface_model)
    assert runtime.input_details().shape == (-1, -1, -1, -1)
    outputs = runtime.infer(np.zeros(BLAZEFACE_INPUT, dtype=np.float32))
    assert [o.shape for o in outputs] == [(1, 896, 1), (1, 896, 16)]


@pytest.mark.parametrize(
    ("shape", "dtype"),
    [(VGA_INPUT, np.uint8), ((1, 480, 640, 3), np.float32), ((3, 480, 640), np.float32)],
)
def test_input_of_the_wrong_shape_or_type_is_refused(runtime, shape, dtype):
    with pytest.raises(InferenceError, match="does not fit"):
        runtime.infer(np.zeros(shape, dtype=dtype))


def test_nothing_runs_before_load_or_after_close(centerface_model):
    runtime = OpenCVRuntime()
    with pytest.raises(ModelLoadError):
        runtime.input_details()
    with pytest.raises(InferenceError):
        runtime.infer(np.zeros(VGA_INPUT, dtype=np.float32))

    with runtime:
        runtime.load(centerface_model, input_shape=VGA_INPUT)
        assert len(runtime.output_details()) == 4
    with pytest.raises(InferenceError):
        runtime.infer(np.zeros(VGA_INPUT, dtype=np.float32))
    runtime.close()


@pytest.mark.parametrize("name", ["bogus.onnx", "bogus.tflite"])
def test_file_that_is_not_a_model_fails_to_load_and_keeps_the_loaded_model(runtime, tmp_path, name):
    bogus = tmp_path / name
    bogus.write_bytes(b"not a model" * 100)

    with pytest.raises(ModelLoadError, match="bogus"):
        runtime.load(bogus)

    assert len(runtime.infer(np.zeros(VGA_INPUT, dtype=np.float32))) == 4


def test_other_formats_and_missing_files_fail_to_load(tmp_path):
    with pytest.raises(ModelLoadError, match=r"\.pb"):
        OpenCVRuntime().load(tmp_path / "frozen.pb")
    with pytest.raises(ModelLoadError):
        OpenCVRuntime().load(tmp_path / "absent.onnx")
