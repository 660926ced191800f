"""The ONNX Runtime plugin on the real CenterFace model."""

import numpy as np
import pytest

from agent.runtimes._shared import ModelFormatError, graph_inputs, with_input_shape
from agent.runtimes.base import (
    InferenceError,
    ModelLoadError,
    RuntimeUnavailableError,
    probe_runtime,
)
from agent.runtimes.onnx import OnnxRuntime, choose_providers

CENTERFACE_OUTPUTS = ["537", "538", "539", "540"]
VGA_INPUT = (1, 3, 480, 640)


@pytest.fixture
def runtime(centerface_model):
    runtime = OnnxRuntime(num_threads=1, providers=["CPUExecutionProvider"])
    runtime.load(centerface_model, input_shape=VGA_INPUT)
    yield runtime
    runtime.close()


def test_probe_reports_onnxruntime_with_the_cpu_provider():
    probe = probe_runtime("onnx")
    assert probe.key == "onnx"
    assert probe.available is True
    assert "onnxruntime" in probe.reason
    assert "CPUExecutionProvider" in probe.reason


def test_providers_are_tried_best_first_and_narrowed_on_request():
    available = ["AzureExecutionProvider", "CPUExecutionProvider", "CUDAExecutionProvider"]
    assert choose_providers(available, None) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(available, ["CPUExecutionProvider", "CUDAExecutionProvider"]) == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert choose_providers(available, ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    with pytest.raises(RuntimeUnavailableError, match="TensorrtExecutionProvider"):
        choose_providers(available, ["TensorrtExecutionProvider"])


def test_a_provider_this_build_lacks_makes_the_load_fail_with_the_reason(centerface_model):
    runtime = OnnxRuntime(providers=["NoSuchExecutionProvider"])
    with pytest.raises(RuntimeUnavailableError, match="NoSuchExecutionProvider"):
        runtime.load(centerface_model)


def test_an_empty_provider_list_is_refused():
    with pytest.raises(ValueError, match="providers"):
        OnnxRuntime(providers=[])


def test_the_file_declares_a_placeholder_input_that_the_load_replaces(centerface_model, runtime):
    assert graph_inputs(centerface_model.read_bytes()) == [("input.1", (10, 3, 32, 32))]

    details = runtime.input_details()
    assert (details.name, details.shape, details.dtype) == ("input.1", VGA_INPUT, np.float32)
    assert runtime.providers == ("CPUExecutionProvider",)


def test_outputs_are_name_sorted_with_shapes_for_the_loaded_size(runtime):
    outputs = runtime.output_details()
    assert [o.name for o in outputs] == CENTERFACE_OUTPUTS
    assert [o.shape for o in outputs] == [
        (1, 1, 120, 160),
        (1, 2, 120, 160),
        (1, 2, 120, 160),
        (1, 10, 120, 160),
    ]


def test_infer_returns_outputs_in_the_declared_order_and_repeats_exactly(runtime):
    tensor = np.random.default_rng(3).uniform(0, 255, size=VGA_INPUT).astype(np.float32)

    first = runtime.infer(tensor)
    second = runtime.infer(tensor)

    assert [o.shape for o in first] == [o.shape for o in runtime.output_details()]
    heatmap = first[0]
    assert ((heatmap >= 0.0) & (heatmap <= 1.0)).all()  # the heatmap is a probability
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)


def test_outputs_survive_the_next_inference(runtime):
    kept = runtime.infer(np.zeros(VGA_INPUT, dtype=np.float32))
    snapshot = [o.copy() for o in kept]

    other = runtime.infer(np.full(VGA_INPUT, 200.0, dtype=np.float32))

    assert not np.array_equal(other[1], snapshot[1])
    for a, b in zip(kept, snapshot, strict=True):
        np.testing.assert_array_equal(a, b)


def test_free_dimensions_are_reported_as_minus_one_and_take_any_size(centerface_model):
    runtime = OnnxRuntime(num_threads=1)
    runtime.load(centerface_model, input_shape=(1, 3, -1, -1))

    assert runtime.input_details().shape == (1, 3, -1, -1)
    small = runtime.infer(np.zeros((1, 3, 64, 96), dtype=np.float32))
    large = runtime.infer(np.zeros((1, 3, 128, 160), dtype=np.float32))

    assert small[0].shape == (1, 1, 16, 24)
    assert large[0].shape == (1, 1, 32, 40)
    with pytest.raises(InferenceError, match="does not fit"):
        runtime.infer(np.zeros((1, 1, 64, 96), dtype=np.float32))


def test_without_an_input_shape_the_declared_one_is_used(centerface_model):
    runtime = OnnxRuntime(num_threads=1)
    runtime.load(centerface_model)
    assert runtime.input_details().shape == (10, 3, 32, 32)
    assert runtime.infer(np.zeros((10, 3, 32, 32), dtype=np.float32))[0].shape == (10, 1, 8, 8)


@pytest.mark.parametrize(
    ("shape", "dtype"),
    [(VGA_INPUT, np.float64), ((1, 480, 640, 3), np.float32), ((3, 480, 640), np.float32)],
)
def test_input_of_the_wrong_shape_or_type_is_refused(runtime, shape, dtype):
    with pytest.raises(InferenceError, match="does not fit"):
        runtime.infer(np.zeros(shape, dtype=dtype))


def test_nothing_runs_before_load_or_after_close(centerface_model):
    runtime = OnnxRuntime()
    with pytest.raises(ModelLoadError):
        runtime.input_details()
    with pytest.raises(ModelLoadError):
        runtime.output_details()
    with pytest.raises(InferenceError):
        runtime.infer(np.zeros(VGA_INPUT, dtype=np.float32))

    with runtime:
        runtime.load(centerface_model, input_shape=VGA_INPUT)
        assert runtime.input_details().shape == VGA_INPUT
    with pytest.raises(InferenceError):
        runtime.infer(np.zeros(VGA_INPUT, dtype=np.float32))
    runtime.close()  # a second close is harmless


def test_file_that_is_not_a_model_fails_to_load_and_keeps_the_loaded_model(runtime, tmp_path):
    bogus = tmp_path / "bogus.onnx"
    bogus.write_bytes(b"not a protobuf" * 100)

    with pytest.raises(ModelLoadError, match=r"bogus\.onnx"):
        runtime.load(bogus)
    with pytest.raises(ModelLoadError, match=r"bogus\.onnx"):
        runtime.load(bogus, input_shape=VGA_INPUT)

    assert len(runtime.infer(np.zeros(VGA_INPUT, dtype=np.float32))) == 4


def test_missing_model_file_fails_to_load(tmp_path):
    with pytest.raises(ModelLoadError):
        OnnxRuntime().load(tmp_path / "absent.onnx")


def test_input_shape_rewrite_refuses_bytes_that_are_not_onnx():
    with pytest.raises(ModelFormatError):
        with_input_shape(b"\x0a\x03abc", (1, 3, 32, 32))


def test_thread_count_must_be_positive():
    with pytest.raises(ValueError, match="num_threads"):
        OnnxRuntime(num_threads=0)
