"""The LiteRT runtime on the real BlazeFace short-range model."""

import numpy as np
import pytest

from agent.runtimes._shared import natural_key
from agent.runtimes.base import InferenceError, ModelLoadError
from agent.runtimes.litert import LiteRTRuntime


@pytest.fixture
def runtime(blazeface_model):
    runtime = LiteRTRuntime(num_threads=1)
    runtime.load(blazeface_model)
    yield runtime
    runtime.close()


def test_probe_reports_litert_available_on_this_machine():
    probe = LiteRTRuntime.probe()
    assert probe.key == "litert"
    assert probe.available is True
    assert "ai-edge-litert" in probe.reason


def test_loaded_model_reports_its_input_and_name_sorted_outputs(runtime):
    details = runtime.input_details()
    assert details.shape == (1, 128, 128, 3)
    assert details.dtype == np.float32
    assert not details.quantized
    outputs = runtime.output_details()
    assert [o.name for o in outputs] == ["classificators", "regressors"]
    assert [o.shape for o in outputs] == [(1, 896, 1), (1, 896, 16)]
    assert runtime.source.startswith("ai-edge-litert")


def test_infer_returns_outputs_in_the_declared_order_and_repeats_exactly(runtime):
    rng = np.random.default_rng(7)
    tensor = rng.uniform(-1.0, 1.0, size=(1, 128, 128, 3)).astype(np.float32)

    first = runtime.infer(tensor)
    second = runtime.infer(tensor)

    assert [o.shape for o in first] == [(1, 896, 1), (1, 896, 16)]
    assert all(o.dtype == np.float32 for o in first)
    assert all(np.isfinite(o).all() for o in first)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)


def test_outputs_survive_the_next_inference(runtime):
    zeros = np.zeros((1, 128, 128, 3), dtype=np.float32)
    ones = np.ones((1, 128, 128, 3), dtype=np.float32)
    kept = runtime.infer(zeros)
    snapshot = [o.copy() for o in kept]

    other = runtime.infer(ones)

    assert not np.array_equal(other[1], snapshot[1])
    for a, b in zip(kept, snapshot, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("shape", "dtype"),
    [((1, 128, 128, 3), np.uint8), ((1, 3, 128, 128), np.float32), ((128, 128, 3), np.float32)],
)
def test_input_of_the_wrong_shape_or_type_is_refused(runtime, shape, dtype):
    with pytest.raises(InferenceError, match="does not fit"):
        runtime.infer(np.zeros(shape, dtype=dtype))


def test_nothing_runs_before_load_or_after_close(blazeface_model):
    runtime = LiteRTRuntime()
    with pytest.raises(ModelLoadError):
        runtime.input_details()
    with pytest.raises(InferenceError):
        runtime.infer(np.zeros((1, 128, 128, 3), dtype=np.float32))

    with runtime:
        runtime.load(blazeface_model)
        assert runtime.input_details().shape == (1, 128, 128, 3)
    with pytest.raises(InferenceError):
        runtime.infer(np.zeros((1, 128, 128, 3), dtype=np.float32))
    runtime.close()  # a second close is harmless


def test_file_that_is_not_a_model_fails_to_load_and_keeps_the_loaded_model(runtime, tmp_path):
    bogus = tmp_path / "bogus.tflite"
    bogus.write_bytes(b"not a flatbuffer" * 100)

    with pytest.raises(ModelLoadError, match=r"bogus\.tflite"):
        runtime.load(bogus)

    assert len(runtime.infer(np.zeros((1, 128, 128, 3), dtype=np.float32))) == 2


def test_missing_model_file_fails_to_load(tmp_path):
    with pytest.raises(ModelLoadError):
        LiteRTRuntime().load(tmp_path / "absent.tflite")


def test_thread_count_must_be_positive():
    with pytest.raises(ValueError, match="num_threads"):
        LiteRTRuntime(num_threads=0)


def test_output_names_sort_with_numbers_compared_as_numbers():
    names = ["Identity_10", "Identity", "Identity_2", "Identity_1", "boxes"]
    assert sorted(names, key=natural_key) == [
        "Identity",
        "Identity_1",
        "Identity_2",
        "Identity_10",
        "boxes",
    ]


def test_runtime_takes_the_thread_count_every_runtime_accepts(blazeface_model):
    runtime = LiteRTRuntime(num_threads=2)
    runtime.load(blazeface_model)
    assert runtime.num_threads == 2
    assert len(runtime.infer(np.zeros((1, 128, 128, 3), dtype=np.float32))) == 2
