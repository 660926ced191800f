"""NVIDIA TensorRT: an engine built on the device from the bundle's ONNX variant, then cached.

Engines are specific to the GPU and the TensorRT version that built them, so the cache key is
the model's digest, the GPU's name, the TensorRT version, the precision and the input shape.
Two API generations are supported: TensorRT 8.0-8.4 (JetPack 4.6: `build_engine`, binding
indices, `execute_async_v2`) and 8.5 onwards (`build_serialized_network`, named tensors with
`set_tensor_address` and `execute_async_v3`; TensorRT 10 has only these). Buffers come from
`cuda_buffers` (pycuda or cuda-python). Outputs are returned in name order like every plugin.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from agent.runtimes._shared import ModelFormatError, natural_key, with_input_shape
from agent.runtimes.base import (
    InferenceError,
    ModelLoadError,
    Runtime,
    RuntimeOptions,
    RuntimeProbe,
    RuntimeUnavailableError,
    TensorDetails,
)
from agent.runtimes.cuda_buffers import CudaBackend, find_cuda, open_backend
from agent.runtimes.worker.program import INT8_NEEDS_CALIBRATION, replaying_calibrator
from protocol.events import RuntimeKey

logger = logging.getLogger(__name__)

CUDA_DEVICE = "CUDA"
PRECISIONS = ("fp32", "fp16", "int8")
WORKSPACE_BYTES = 1 << 28  # 256 MiB: enough for detection models, fits a 4 GB Nano
Api = Literal["bindings", "tensors"]


def api_for_version(version: str) -> Api:
    """Which TensorRT API generation a version has: named tensors arrived in 8.5.

    Raises ValueError for a version string that does not start with major.minor.
    """
    match = re.match(r"^(\d+)\.(\d+)", version)
    if not match:
        raise ValueError(f"unrecognised TensorRT version {version!r}")
    major, minor = int(match.group(1)), int(match.group(2))
    return "tensors" if (major, minor) >= (8, 5) else "bindings"


def engine_cache_path(
    cache_dir: Path,
    *,
    model_digest: str,
    gpu_name: str,
    trt_version: str,
    precision: str,
    input_shape: Sequence[int],
    calibration_digest: str | None = None,
) -> Path:
    """Where the engine for this model, GPU, TensorRT version and build settings is cached."""
    gpu = re.sub(r"[^a-z0-9]+", "-", gpu_name.lower()).strip("-") or "gpu"
    shape = "x".join(str(int(d)) for d in input_shape)
    # every setting that changes the engine goes into the name, the calibration by digest
    settings = hashlib.sha256(f"{precision}|{shape}|{calibration_digest or ''}".encode())
    name = f"{model_digest[:16]}-{gpu}-trt{trt_version}-{precision}-{shape}"
    return Path(cache_dir) / f"{name}-{settings.hexdigest()[:8]}.engine"


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def import_tensorrt(import_module: Callable[[str], Any] = importlib.import_module) -> Any:
    """The tensorrt module. Raises RuntimeUnavailableError when it is not installed."""
    try:
        return import_module("tensorrt")
    except ImportError as exc:
        raise RuntimeUnavailableError(f"tensorrt is not installed ({exc})") from exc


def probe_with(
    import_module: Callable[[str], Any] = importlib.import_module,
    open_cuda: Callable[[str, Any], CudaBackend] = open_backend,
) -> RuntimeProbe:
    """TensorRT, CUDA bindings and a GPU, each checked in turn; never raises."""
    key = TensorRTRuntime.KEY
    try:
        trt = import_tensorrt(import_module)
        version = str(getattr(trt, "__version__", "unknown"))
        api = api_for_version(version)
        kind, module = find_cuda(import_module)
        backend = open_cuda(kind, module)
    except (RuntimeUnavailableError, ValueError) as exc:
        return RuntimeProbe(key, False, str(exc))
    try:
        gpu = backend.gpu_name()
    finally:
        backend.free()
    return RuntimeProbe(
        key,
        True,
        f"TensorRT {version} ({api} API) with {kind} on {gpu}",
        devices=frozenset({CUDA_DEVICE}),
    )


class TensorRTRuntime(Runtime):
    """A TensorRT engine on GPU 0, built from ONNX on first load and cached."""

    KEY = RuntimeKey.TENSORRT

    def __init__(
        self,
        *,
        num_threads: int | None = None,
        precision: str = "fp16",
        cache_dir: Path | None = None,
        calibration_cache: Path | None = None,
    ) -> None:
        """Raises ValueError for an unknown precision, or INT8 without a calibration cache."""
        super().__init__(num_threads=num_threads)
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if precision == "int8" and calibration_cache is None:
            raise ValueError(INT8_NEEDS_CALIBRATION)
        self.precision = precision
        self.cache_dir = cache_dir
        self.calibration_cache = calibration_cache
        self.engine_path: Path | None = None
        self._trt: Any = None
        self._cuda: CudaBackend | None = None
        self._engine: Any = None
        self._context: Any = None
        self._api: Api = "tensors"
        self._input: TensorDetails | None = None
        self._outputs: list[TensorDetails] = []
        self._host_out: list[np.ndarray] = []
        self._device_in = 0
        self._device_out: list[int] = []
        self._bindings: list[int] = []

    @classmethod
    def create(
        cls, *, num_threads: int | None = None, options: RuntimeOptions | None = None
    ) -> TensorRTRuntime:
        """Raises RuntimeUnavailableError for a device other than CUDA or a bad precision."""
        options = options or RuntimeOptions()
        if options.device not in (None, CUDA_DEVICE):
            raise RuntimeUnavailableError(f"TensorRT cannot target device {options.device}")
        try:
            return cls(
                num_threads=num_threads,
                precision=options.precision or "fp16",
                cache_dir=options.cache_dir,
                calibration_cache=options.calibration_cache,
            )
        except ValueError as exc:
            raise RuntimeUnavailableError(str(exc)) from exc

    @classmethod
    def probe(cls) -> RuntimeProbe:
        return probe_with()

    def load(self, model_path: Path, *, input_shape: Sequence[int] | None = None) -> None:
        """Load the cached engine for this model, or build it from the ONNX file and cache it.

        Raises RuntimeUnavailableError or ModelLoadError.
        """
        trt = import_tensorrt()
        version = str(trt.__version__)
        api = api_for_version(version)
        try:
            onnx = Path(model_path).read_bytes()
            if input_shape is not None:
                onnx = with_input_shape(onnx, tuple(int(d) for d in input_shape))
            calibration = self.calibration_cache.read_bytes() if self.calibration_cache else None
        except (OSError, ModelFormatError) as exc:
            raise ModelLoadError(f"TensorRT cannot read {model_path}: {exc}") from exc
        cuda = open_backend(*find_cuda())
        trt_logger = trt.Logger(trt.Logger.WARNING)
        path = None
        if self.cache_dir is not None:
            path = engine_cache_path(
                self.cache_dir,
                model_digest=_digest(onnx),
                gpu_name=cuda.gpu_name(),
                trt_version=version,
                precision=self.precision,
                input_shape=tuple(input_shape or ()),
                calibration_digest=_digest(calibration) if calibration else None,
            )
        cuda.enter()
        try:
            if path is not None and path.is_file():
                serialized = path.read_bytes()
                logger.info("tensorrt_engine_cached path=%s", path)
            else:
                serialized = self._build(trt, trt_logger, api, onnx, calibration)
                if path is not None:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    tmp = path.with_suffix(".part")
                    tmp.write_bytes(serialized)
                    tmp.replace(path)  # a crash mid-write leaves no half engine behind
            engine = trt.Runtime(trt_logger).deserialize_cuda_engine(serialized)
            if engine is None:
                raise ModelLoadError(f"TensorRT could not deserialize the engine for {model_path}")
            context = engine.create_execution_context()
        except ModelLoadError:
            cuda.leave()
            cuda.free()
            raise
        except Exception as exc:  # TensorRT raises plain RuntimeError/TypeError
            cuda.leave()
            cuda.free()
            raise ModelLoadError(f"TensorRT could not load {model_path}: {exc}") from exc
        cuda.leave()
        self.close()
        self._trt, self._cuda, self._engine, self._context = trt, cuda, engine, context
        self._api = api
        self.engine_path = path
        self._allocate(cuda, input_shape)

    def _build(
        self, trt: Any, trt_logger: Any, api: Api, onnx: bytes, calibration: bytes | None
    ) -> bytes:
        builder = trt.Builder(trt_logger)
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, trt_logger)
        if not parser.parse(onnx):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ModelLoadError(f"TensorRT's ONNX parser refused the model: {errors}")
        config = builder.create_builder_config()
        if hasattr(config, "set_memory_pool_limit"):
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
        else:  # TensorRT 8.0-8.3
            config.max_workspace_size = WORKSPACE_BYTES
        if self.precision in ("fp16", "int8") and builder.platform_has_fast_fp16:
            config.set_flag(trt.BuilderFlag.FP16)
        if self.precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
            config.int8_calibrator = replaying_calibrator(trt, calibration or b"")
        logger.info("tensorrt_engine_build precision=%s api=%s", self.precision, api)
        if api == "bindings":
            engine = builder.build_engine(network, config)
            if engine is None:
                raise ModelLoadError("TensorRT failed to build the engine (see its log)")
            return bytes(engine.serialize())
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise ModelLoadError("TensorRT failed to build the engine (see its log)")
        return bytes(serialized)

    def _io(self) -> list[tuple[str, bool, tuple[int, ...], np.dtype]]:
        trt, engine = self._trt, self._engine
        if self._api == "tensors":
            names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
            return [
                (
                    n,
                    engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT,
                    tuple(engine.get_tensor_shape(n)),
                    np.dtype(trt.nptype(engine.get_tensor_dtype(n))),
                )
                for n in names
            ]
        return [
            (
                engine.get_binding_name(i),
                bool(engine.binding_is_input(i)),
                tuple(engine.get_binding_shape(i)),
                np.dtype(trt.nptype(engine.get_binding_dtype(i))),
            )
            for i in range(engine.num_bindings)
        ]

    def _allocate(self, cuda: CudaBackend, input_shape: Sequence[int] | None) -> None:
        io = self._io()
        inputs = [t for t in io if t[1]]
        if len(inputs) != 1:
            raise ModelLoadError(f"the engine has {len(inputs)} inputs; one is supported")
        name, _, shape, dtype = inputs[0]
        if any(d < 0 for d in shape):
            if input_shape is None or any(int(d) < 0 for d in input_shape):
                raise ModelLoadError(f"the engine's input {shape} needs a fixed input_shape")
            shape = tuple(int(d) for d in input_shape)
            if self._api == "tensors":
                self._context.set_input_shape(name, shape)
            else:
                self._context.set_binding_shape(0, shape)
        self._input = TensorDetails(name=name, shape=shape, dtype=dtype)
        self._device_in = cuda.alloc(int(np.prod(shape)) * dtype.itemsize)
        addresses = {name: self._device_in}
        outputs = sorted((t for t in io if not t[1]), key=lambda t: natural_key(t[0]))
        for out_name, _, _, out_dtype in outputs:
            out_shape = tuple(
                self._context.get_tensor_shape(out_name)
                if self._api == "tensors"
                else self._context.get_binding_shape(self._engine.get_binding_index(out_name))
            )
            host = np.empty(out_shape, dtype=out_dtype)
            self._outputs.append(TensorDetails(name=out_name, shape=out_shape, dtype=out_dtype))
            self._host_out.append(host)
            self._device_out.append(cuda.alloc(host.nbytes))
            addresses[out_name] = self._device_out[-1]
        if self._api == "tensors":
            for tensor_name, ptr in addresses.items():
                self._context.set_tensor_address(tensor_name, ptr)
        else:
            self._bindings = [addresses[t[0]] for t in io]

    def input_details(self) -> TensorDetails:
        if self._input is None:
            raise ModelLoadError("no model loaded")
        return self._input

    def output_details(self) -> list[TensorDetails]:
        if self._input is None:
            raise ModelLoadError("no model loaded")
        return list(self._outputs)

    def infer(self, tensor: np.ndarray) -> list[np.ndarray]:
        expected, cuda = self._input, self._cuda
        if expected is None or cuda is None:
            raise InferenceError("no model loaded")
        if tensor.shape != expected.shape or tensor.dtype != expected.dtype:
            raise InferenceError(
                f"input {tensor.shape} {tensor.dtype} does not fit the engine's "
                f"{expected.shape} {expected.dtype}"
            )
        cuda.enter()
        try:
            cuda.to_device(self._device_in, np.ascontiguousarray(tensor))
            stream = cuda.stream_handle()
            if self._api == "tensors":
                ok = self._context.execute_async_v3(stream)
            else:
                ok = self._context.execute_async_v2(self._bindings, stream)
            if not ok:
                raise InferenceError("TensorRT execution failed")
            for host, ptr in zip(self._host_out, self._device_out, strict=True):
                cuda.to_host(host, ptr)
            cuda.synchronize()
        except InferenceError:
            raise
        except Exception as exc:  # pycuda/cuda-python/TensorRT errors have no common base
            raise InferenceError(f"TensorRT inference failed: {exc}") from exc
        finally:
            cuda.leave()
        # copies: the host buffers are reused by the next call
        return [host.copy() for host in self._host_out]

    def close(self) -> None:
        self._context = None
        self._engine = None
        if self._cuda is not None:
            self._cuda.free()
        self._cuda = None
        self._input = None
        self._outputs = []
        self._host_out = []
        self._device_in = 0
        self._device_out = []
        self._bindings = []
