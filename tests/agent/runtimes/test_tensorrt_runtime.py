"""TensorRT plugin logic that needs no GPU: API dispatch, engine cache key, probe reasons.

The GPU path (build, cache, infer) is exercised by bench/gpu_check.sh on an NVIDIA machine.
"""

from __future__ import annotations

import importlib
import types
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from agent.runtimes.base import (
    RuntimeOptions,
    RuntimeUnavailableError,
    load_runtime_class,
)
from agent.runtimes.tensorrt import (
    TensorRTRuntime,
    api_for_version,
    engine_cache_path,
    probe_with,
)

KEY: dict[str, Any] = {
    "model_digest": "ab" * 32,
    "gpu_name": "NVIDIA Tegra X1",
    "trt_version": "8.2.1.8",
    "precision": "fp16",
    "input_shape": (1, 3, 480, 640),
}


@pytest.mark.parametrize(
    ("version", "api"),
    [
        ("8.0.1.6", "bindings"),  # JetPack 4.6
        ("8.2.1.8", "bindings"),  # JetPack 4.6.1
        ("8.4.3.1", "bindings"),
        ("8.5.2.2", "tensors"),  # JetPack 5.1
        ("8.6.1", "tensors"),
        ("10.3.0", "tensors"),  # build_engine and bindings are gone
    ],
)
def test_api_generation_follows_the_version(version, api):
    assert api_for_version(version) == api


def test_unrecognised_version_is_an_error():
    with pytest.raises(ValueError, match="unrecognised TensorRT version"):
        api_for_version("next")


def test_engine_cache_key_covers_model_gpu_version_and_settings(tmp_path):
    base = engine_cache_path(tmp_path, **KEY)
    assert base == engine_cache_path(tmp_path, **KEY)
    assert base.parent == tmp_path and base.suffix == ".engine"
    assert "nvidia-tegra-x1" in base.name and "trt8.2.1.8" in base.name
    changes: list[dict[str, Any]] = [
        {"model_digest": "cd" * 32},
        {"gpu_name": "Tesla T4"},
        {"trt_version": "8.2.3.0"},
        {"precision": "int8"},
        {"input_shape": (1, 3, 640, 640)},
        {"calibration_digest": "ef" * 32},
    ]
    names = {engine_cache_path(tmp_path, **{**KEY, **change}).name for change in changes}
    assert base.name not in names
    assert len(names) == len(changes)


def _importer(fakes: Mapping[str, object]) -> Callable[[str], Any]:
    """The real importer, except for the modules named, which stand for absent hardware SDKs."""

    def import_module(name: str) -> Any:
        if name in fakes:
            found = fakes[name]
            if found is None:
                raise ImportError(f"No module named {name!r}", name=name)
            return found
        return importlib.import_module(name)

    return import_module


def _trt(version: str) -> types.ModuleType:
    module = types.ModuleType("tensorrt")
    module.__version__ = version  # type: ignore[attr-defined]
    return module


NO_CUDA = {"pycuda.driver": None, "cuda.bindings.runtime": None, "cuda.cudart": None}


def test_probe_without_tensorrt_says_so():
    probe = probe_with(_importer({"tensorrt": None}))
    assert not probe.available
    assert probe.reason.startswith("tensorrt is not installed")


def test_probe_on_this_machine_never_raises():
    probe = TensorRTRuntime.probe()
    assert probe.key == "tensorrt"
    assert probe.reason


def test_probe_with_tensorrt_but_no_cuda_bindings():
    probe = probe_with(_importer({"tensorrt": _trt("8.2.1.8"), **NO_CUDA}))
    assert not probe.available
    assert "no CUDA bindings (pycuda or cuda-python)" in probe.reason


def test_probe_with_bindings_but_no_gpu_reports_cuda():
    def no_gpu(kind, module):
        raise RuntimeUnavailableError(f"CUDA ({kind}) could not start: no CUDA-capable device")

    cudart = types.ModuleType("cuda.cudart")
    fakes = {"tensorrt": _trt("10.3.0"), "pycuda.driver": None, "cuda.bindings.runtime": cudart}
    probe = probe_with(_importer(fakes), open_cuda=no_gpu)
    assert not probe.available
    assert probe.reason == "CUDA (cuda-python) could not start: no CUDA-capable device"


def test_probe_with_everything_names_version_api_binding_and_gpu():
    class Backend:
        freed = False

        def gpu_name(self):
            return "Tesla T4"

        def free(self):
            Backend.freed = True

    fakes = {"tensorrt": _trt("8.2.1.8"), "pycuda.driver": types.ModuleType("pycuda.driver")}
    probe = probe_with(_importer(fakes), open_cuda=lambda kind, module: Backend())  # type: ignore[arg-type,return-value]
    assert probe.available
    assert probe.reason == "TensorRT 8.2.1.8 (bindings API) with pycuda on Tesla T4"
    assert probe.devices == frozenset({"CUDA"})
    assert Backend.freed


def test_create_takes_device_precision_and_cache_folder(tmp_path):
    calib = tmp_path / "model.calib"
    runtime = TensorRTRuntime.create(
        options=RuntimeOptions(
            device="CUDA", precision="int8", cache_dir=tmp_path, calibration_cache=calib
        )
    )
    assert (runtime.precision, runtime.cache_dir, runtime.calibration_cache) == (
        "int8",
        tmp_path,
        calib,
    )
    assert TensorRTRuntime.create().precision == "fp16"
    with pytest.raises(RuntimeUnavailableError, match="cannot target device CPU"):
        TensorRTRuntime.create(options=RuntimeOptions(device="CPU"))
    with pytest.raises(RuntimeUnavailableError, match="calibration cache"):
        TensorRTRuntime.create(options=RuntimeOptions(precision="int8"))


def test_registry_finds_the_plugin_without_tensorrt_installed():
    assert load_runtime_class("tensorrt") is TensorRTRuntime


def test_load_without_tensorrt_is_unavailable(tmp_path):
    try:
        importlib.import_module("tensorrt")
    except ImportError:
        pass
    else:
        pytest.skip("tensorrt is installed here; bench/gpu_check.sh covers loading")
    with pytest.raises(RuntimeUnavailableError, match="tensorrt is not installed"):
        TensorRTRuntime().load(Path(tmp_path / "model.onnx"))
