"""The worker's TensorRT backend (JetPack 4.6's TensorRT 8.2 API), run as a real worker process.

No GPU or TensorRT exists on the test machine, so stand-in `tensorrt` and `pycuda` packages
are put on the worker's import path (the way a profile's `python_path` adds JetPack's system
packages): they keep "device" buffers in host memory and compute a known function, so the
test checks what the backend itself does — engine build and cache, binding order, copies in
and out, output order — not TensorRT.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from agent.runtimes.base import ModelLoadError, RuntimeOptions, RuntimeUnavailableError
from agent.runtimes.tensorrt import TensorRTRuntime
from agent.runtimes.worker.launch import WorkerLaunch, probe_in_worker
from agent.runtimes.worker.proxy import worker_runtime_class

SHAPE = (1, 3, 32, 32)

PYCUDA_DRIVER = """
import numpy as np
buffers = {}
def init():
    pass
class Context:
    def pop(self):
        pass
class Device:
    def __init__(self, number):
        pass
    def make_context(self):
        return Context()
class Allocation:
    def __init__(self, nbytes):
        self.data = np.zeros(nbytes, np.uint8)
        self.pointer = int(self.data.ctypes.data)
        buffers[self.pointer] = self.data
    def __int__(self):
        return self.pointer
    def free(self):
        buffers.pop(self.pointer, None)
def mem_alloc(nbytes):
    return Allocation(nbytes)
def memcpy_htod(pointer, host):
    buffers[int(pointer)][: host.nbytes] = host.reshape(-1).view(np.uint8)
def memcpy_dtoh(host, pointer):
    host.reshape(-1).view(np.uint8)[:] = buffers[int(pointer)][: host.nbytes]
"""

# TensorRT 8.2's binding API; the engine's bindings are input, "out_10", "out_2" (so name
# order differs from binding order); out_2 = 2 * input, out_10 = the sum of each channel
TENSORRT = """
import json, os
import numpy as np
import pycuda.driver as cuda
__version__ = "8.2.1.8"
FLOAT = "float32"
def nptype(kind):
    return np.dtype(kind).type
class Logger:
    WARNING = 2
    def __init__(self, level):
        pass
class NetworkDefinitionCreationFlag:
    EXPLICIT_BATCH = 0
class BuilderFlag:
    FP16 = "fp16"
    INT8 = "int8"
class IInt8EntropyCalibrator2:
    def __init__(self):
        pass
class Network:
    pass
class OnnxParser:
    num_errors = 0
    def __init__(self, network, logger):
        pass
    def parse(self, data):
        return data[:1] != b"x"
class Config:
    max_workspace_size = 0
    int8_calibrator = None
    def __init__(self):
        self.flags = []
    def set_flag(self, flag):
        self.flags.append(flag)
class Builder:
    platform_has_fast_fp16 = True
    def __init__(self, logger):
        pass
    def create_network(self, flags):
        return Network()
    def create_builder_config(self):
        return Config()
    def build_serialized_network(self, network, config):
        with open(os.environ["FAKE_TRT_BUILDS"], "a") as log:
            log.write("build\\n")
        blob = {"flags": config.flags, "workspace": config.max_workspace_size}
        calibrator = config.int8_calibrator
        if calibrator is not None:  # replayed as TensorRT would: batches until None, then cache
            assert isinstance(calibrator, IInt8EntropyCalibrator2)
            blob["calibration"] = {
                "batch_size": calibrator.get_batch_size(),
                "batch": calibrator.get_batch(["input"]),
                "cache": calibrator.read_calibration_cache().decode("latin-1"),
            }
        return json.dumps(blob).encode()
class Engine:
    num_bindings = 3
    names = ["input", "out_10", "out_2"]
    shapes = [(1, 3, 32, 32), (1, 3), (1, 3, 32, 32)]
    def __init__(self, blob):
        self.blob = json.loads(blob)
    def get_binding_name(self, i):
        return self.names[i]
    def binding_is_input(self, i):
        return i == 0
    def get_binding_shape(self, i):
        return self.shapes[i]
    def get_binding_dtype(self, i):
        return FLOAT
    def create_execution_context(self):
        return Context(self)
class Context:
    def __init__(self, engine):
        self.engine = engine
    def execute_v2(self, bindings):
        def view(i):
            n = int(np.prod(self.engine.shapes[i]))
            return cuda.buffers[bindings[i]][: n * 4].view(np.float32).reshape(self.engine.shapes[i])
        source = view(0)
        view(2)[...] = source * 2
        view(1)[...] = source.sum(axis=(2, 3))
        return True
class Runtime:
    def __init__(self, logger):
        pass
    def deserialize_cuda_engine(self, blob):
        return Engine(blob)
"""


@pytest.fixture
def fake_vendor(tmp_path: Path) -> Path:
    root = tmp_path / "jetpack-dist-packages"
    (root / "pycuda").mkdir(parents=True)
    (root / "pycuda" / "__init__.py").write_text("")
    (root / "pycuda" / "driver.py").write_text(textwrap.dedent(PYCUDA_DRIVER))
    (root / "tensorrt.py").write_text(textwrap.dedent(TENSORRT))
    return root


def jetson_launch(tmp_path: Path, vendor: Path) -> WorkerLaunch:
    return WorkerLaunch(
        python=sys.executable,
        python_path=(str(vendor),),
        env={"FAKE_TRT_BUILDS": str(tmp_path / "builds.log")},
        shm_dir=tmp_path,
    )


def test_probe_finds_tensorrt_on_the_workers_import_path(tmp_path, fake_vendor) -> None:
    probe = probe_in_worker("tensorrt", jetson_launch(tmp_path, fake_vendor))
    assert probe.available, probe.reason
    assert "TensorRT 8.2.1.8 on CUDA" in probe.reason
    assert probe.devices == frozenset({"CUDA"})


def test_without_tensorrt_the_probe_says_so(tmp_path) -> None:
    probe = probe_in_worker("tensorrt", WorkerLaunch(python=sys.executable, shm_dir=tmp_path))
    assert not probe.available
    assert "tensorrt is not installed" in probe.reason


def test_the_engine_is_built_once_cached_and_run_with_bindings(
    tmp_path, fake_vendor, centerface_model
) -> None:
    options = RuntimeOptions(device="CUDA", precision="fp16", cache_dir=tmp_path / "engines")
    runtime_class = worker_runtime_class("tensorrt", jetson_launch(tmp_path, fake_vendor))
    tensor = np.random.default_rng(5).uniform(0, 1, SHAPE).astype(np.float32)
    for _ in range(2):
        runtime = runtime_class.create(num_threads=1, options=options)
        runtime.load(centerface_model, input_shape=SHAPE)
        try:
            assert runtime.input_details().shape == SHAPE
            assert [o.name for o in runtime.output_details()] == ["out_2", "out_10"]
            doubled, sums = runtime.infer(tensor)
            np.testing.assert_allclose(doubled, tensor * 2)
            np.testing.assert_allclose(sums, tensor.sum(axis=(2, 3)), rtol=1e-5)
        finally:
            runtime.close()
    # built on the first load with FP16, read from the cache on the second
    assert (tmp_path / "builds.log").read_text().splitlines() == ["build"]
    (engine,) = (tmp_path / "engines").glob("*.engine")
    assert "trt8.2.1.8-fp16" in engine.name
    assert b'"fp16"' in engine.read_bytes()


def test_a_vendor_package_failing_its_own_way_is_a_load_error_not_a_crash(
    tmp_path, fake_vendor, centerface_model
) -> None:
    # a TensorRT without the API the backend calls: the worker answers, it does not die
    (fake_vendor / "tensorrt.py").write_text('__version__ = "8.2.1.8"\n')
    runtime = worker_runtime_class("tensorrt", jetson_launch(tmp_path, fake_vendor)).create()
    try:
        with pytest.raises(ModelLoadError, match="tensorrt failed to load: AttributeError"):
            runtime.load(centerface_model, input_shape=SHAPE)
        assert runtime.crashes == 0
    finally:
        runtime.close()


def load_int8(tmp_path: Path, vendor: Path, model: Path, calibration: Path | None) -> None:
    """Load `model` at INT8 in a worker, bypassing `create`'s check, and close it again."""
    options = RuntimeOptions(
        device="CUDA",
        precision="int8",
        cache_dir=tmp_path / "engines",
        calibration_cache=calibration,
    )
    runtime = worker_runtime_class("tensorrt", jetson_launch(tmp_path, vendor))(options=options)
    try:
        runtime.load(model, input_shape=SHAPE)
    finally:
        runtime.close()


def test_int8_builds_with_the_int8_flag_replaying_the_bundles_calibration_cache(
    tmp_path, fake_vendor, centerface_model
) -> None:
    calibration = tmp_path / "calibration.cache"
    calibration.write_bytes(b"TRT-8201-EntropyCalibration2\ninput: 3c010a14\n\x00\xff")
    load_int8(tmp_path, fake_vendor, centerface_model, calibration)
    (engine,) = (tmp_path / "engines").glob("*.engine")
    built = json.loads(engine.read_bytes())
    # FP16 too where the platform has it, as the in-process plug-in builds INT8
    assert built["flags"] == ["fp16", "int8"]
    replayed = built["calibration"]
    assert (replayed["batch_size"], replayed["batch"]) == (1, None)
    assert replayed["cache"].encode("latin-1") == calibration.read_bytes()


def test_each_calibration_cache_gets_an_engine_of_its_own(
    tmp_path, fake_vendor, centerface_model
) -> None:
    first, second = tmp_path / "first.cache", tmp_path / "second.cache"
    first.write_bytes(b"TRT-8201-EntropyCalibration2\ninput: 3c010a14\n")
    second.write_bytes(b"TRT-8201-EntropyCalibration2\ninput: 3c8b4396\n")
    for calibration in (first, second, first):
        load_int8(tmp_path, fake_vendor, centerface_model, calibration)
    # one build per calibration; the third load reuses the first calibration's engine
    assert (tmp_path / "builds.log").read_text().splitlines() == ["build", "build"]
    engines = sorted((tmp_path / "engines").glob("*.engine"))
    assert len(engines) == 2
    caches = {json.loads(e.read_bytes())["calibration"]["cache"].encode("latin-1") for e in engines}
    assert caches == {first.read_bytes(), second.read_bytes()}


def test_int8_without_a_calibration_cache_is_refused_with_the_in_process_reason(
    tmp_path, fake_vendor, centerface_model
) -> None:
    options = RuntimeOptions(device="CUDA", precision="int8")
    with pytest.raises(RuntimeUnavailableError) as in_process:
        TensorRTRuntime.create(options=options)
    runtime_class = worker_runtime_class("tensorrt", jetson_launch(tmp_path, fake_vendor))
    with pytest.raises(RuntimeUnavailableError) as in_worker:
        runtime_class.create(options=options)
    assert str(in_worker.value) == str(in_process.value)
    # and the worker itself refuses a load request that carries no cache, before any build
    with pytest.raises(ModelLoadError, match=str(in_process.value)):
        load_int8(tmp_path, fake_vendor, centerface_model, None)
    assert not (tmp_path / "builds.log").exists()
