# ruff: noqa: UP006, UP035, UP045, B904, B905
"""The runtime worker: one vendor runtime in a process of its own.

It runs under the interpreter a device profile names, which may be as old as Python 3.6
(JetPack 4.6), so it uses only the standard library, numpy and the vendor package, and a
static check (vermin, in the test suite) keeps it free of newer syntax and modules.

Channel: requests arrive on stdin and replies leave on the descriptor that was stdout, each a
4-byte big-endian length and a JSON object. Vendor libraries that print are moved to stderr, so
nothing they write can corrupt the channel. Tensors never travel on the channel: the input lies
in a file in shared memory (tmpfs) the agent writes, the outputs in one the worker writes, and
both sides map them. Requests: `probe`, `load`, `infer` (carrying a sequence number echoed in
the reply), `close`. Run `program.py --probe KEY...` to print probe results as JSON and exit.
"""

import importlib
import json
import mmap
import os
import platform
import re
import struct
import sys
import time
from typing import IO, Any, Dict, List, Optional, Sequence, Tuple

try:
    import numpy as np
except ImportError as exc:  # said in the hello and the probes, not as a traceback
    np = None  # type: ignore[assignment]
    NUMPY_MISSING = f"numpy is not installed for this interpreter ({exc})"
else:
    NUMPY_MISSING = ""

HEADER = struct.Struct(">I")
MAX_MESSAGE = 1 << 20
ALIGN = 64

# how a failed request is classified for the agent's error tree
UNAVAILABLE, LOAD, INFERENCE, PROTOCOL = "unavailable", "load", "inference", "protocol"


class ChannelClosed(Exception):
    """The other side closed the channel."""


class BackendError(Exception):
    """A request the backend could not serve; `kind` is one of the classifications above."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


# --- framing -------------------------------------------------------------------------------


def read_exact(stream: IO[bytes], size: int) -> bytes:
    """Exactly `size` bytes; raises ChannelClosed at end of stream."""
    chunks = []
    left = size
    while left:
        chunk = stream.read(left)
        if not chunk:
            raise ChannelClosed("end of stream")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def encode_message(message: Dict[str, Any]) -> bytes:
    """One frame: length header and compact JSON; raises ValueError when too large."""
    body = json.dumps(message, separators=(",", ":")).encode("utf-8")
    if len(body) > MAX_MESSAGE:
        raise ValueError(f"message of {len(body)} bytes exceeds {MAX_MESSAGE}")
    return HEADER.pack(len(body)) + body


def decode_body(body: bytes) -> Dict[str, Any]:
    """The JSON object of one frame; raises ValueError for anything else."""
    message = json.loads(body.decode("utf-8"))
    if not isinstance(message, dict):
        raise ValueError("a message must be a JSON object")
    return message


def read_message(stream: IO[bytes]) -> Dict[str, Any]:
    """The next message; raises ChannelClosed at end of stream, ValueError when malformed."""
    (size,) = HEADER.unpack(read_exact(stream, HEADER.size))
    if size > MAX_MESSAGE:
        raise ValueError(f"message of {size} bytes exceeds {MAX_MESSAGE}")
    return decode_body(read_exact(stream, size))


def write_message(stream: IO[bytes], message: Dict[str, Any]) -> None:
    stream.write(encode_message(message))
    stream.flush()


# --- shared memory -------------------------------------------------------------------------


def aligned(size: int) -> int:
    return (size + ALIGN - 1) // ALIGN * ALIGN


class SharedRegion:
    """A file in shared memory, mapped; `create` sizes it (the file is never shrunk)."""

    def __init__(self, path: str, size: int, create: bool) -> None:
        flags = os.O_RDWR | (os.O_CREAT if create else 0)
        fd = os.open(path, flags, 0o600)
        try:
            if create and os.fstat(fd).st_size < size:
                os.ftruncate(fd, size)
            self.map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.path = path
        self.size = size

    def array(self, offset: int, shape: Sequence[int], dtype: Any) -> Any:
        """A numpy view of part of the region (no copy)."""
        kind = np.dtype(dtype)
        count = int(np.prod(shape)) if len(shape) else 1
        view = np.frombuffer(self.map, dtype=kind, count=count, offset=offset)
        return view.reshape(tuple(shape))


# --- backends ------------------------------------------------------------------------------


def natural_key(name: str) -> Tuple[Any, ...]:
    """Digit runs compared as numbers: the output order every runtime plug-in follows."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def tensor_info(
    name: str, shape: Sequence[int], dtype: Any, quant: Any = (0.0, 0)
) -> Dict[str, Any]:
    return {
        "name": str(name),
        "shape": [int(d) if d is not None and int(d) >= 0 else -1 for d in shape],
        "dtype": np.dtype(dtype).name,
        "quantization": [float(quant[0]), int(quant[1])],
    }


class Backend:
    """One loaded model; `infer` returns the outputs in name order."""

    input = {}  # type: Dict[str, Any]
    outputs = []  # type: List[Dict[str, Any]]

    def infer(self, tensor: Any) -> List[Any]:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the runtime holds beyond memory (device buffers, contexts)."""


_TFLITE_MODULES = (
    ("ai_edge_litert.interpreter", "ai-edge-litert"),
    ("tflite_runtime.interpreter", "tflite-runtime"),
)


def import_tflite() -> Tuple[Any, str]:
    """The TFLite interpreter module and its name; raises BackendError when none imports."""
    failures = []
    for module_name, distribution in _TFLITE_MODULES:
        try:
            return importlib.import_module(module_name), distribution
        except ImportError as exc:
            failures.append(f"{module_name}: {exc}")
    raise BackendError(UNAVAILABLE, "no LiteRT interpreter: " + "; ".join(failures))


def edgetpu_library() -> str:
    return "libedgetpu.1.dylib" if platform.system() == "Darwin" else "libedgetpu.so.1"


def import_pycoral() -> Any:
    try:
        return importlib.import_module("pycoral.utils.edgetpu")
    except ImportError:
        return None


class TFLiteBackend(Backend):
    """LiteRT / tflite_runtime on the CPU, or with the Edge TPU (pycoral or the delegate)."""

    def __init__(self, request: Dict[str, Any], edgetpu: bool) -> None:
        model = request["model"]
        threads = request.get("num_threads")
        try:
            if edgetpu:
                interpreter = self._edgetpu_interpreter(model, threads)
            else:
                module, _ = import_tflite()
                interpreter = module.Interpreter(model_path=model, num_threads=threads)
            details = interpreter.get_input_details()
            if len(details) != 1:
                raise BackendError(LOAD, f"{model} has {len(details)} inputs; one is supported")
            wanted = request.get("input_shape")
            if wanted:
                current = [int(d) for d in details[0]["shape"]]
                target = [c if int(w) < 0 else int(w) for w, c in zip(wanted, current)]
                if len(wanted) != len(current):
                    raise BackendError(LOAD, f"input shape {wanted} does not fit {current}")
                if target != current:
                    interpreter.resize_tensor_input(int(details[0]["index"]), target, strict=False)
            interpreter.allocate_tensors()
        except (ValueError, RuntimeError, OSError) as exc:
            raise BackendError(LOAD, f"LiteRT could not load {model}: {exc}")
        first = interpreter.get_input_details()[0]
        raw = sorted(
            interpreter.get_output_details(),
            key=lambda d: (natural_key(str(d["name"])), int(d["index"])),
        )
        self.interpreter = interpreter
        self.input_index = int(first["index"])
        self.output_indices = [int(d["index"]) for d in raw]
        self.input = tensor_info(
            first["name"], first["shape"], first["dtype"], first["quantization"]
        )
        self.outputs = [
            tensor_info(d["name"], d["shape"], d["dtype"], d["quantization"]) for d in raw
        ]

    @staticmethod
    def _edgetpu_interpreter(model: str, threads: Optional[int]) -> Any:
        with open(model, "rb") as handle:
            if b"edgetpu-custom-op" not in handle.read():
                raise BackendError(LOAD, f"{model} is not compiled for the Edge TPU")
        pycoral = import_pycoral()
        if pycoral is not None:
            return pycoral.make_interpreter(model)
        module, _ = import_tflite()
        try:
            delegate = module.load_delegate(edgetpu_library())
        except (ValueError, OSError) as exc:
            raise BackendError(UNAVAILABLE, f"{edgetpu_library()} delegate did not load: {exc}")
        return module.Interpreter(
            model_path=model, experimental_delegates=[delegate], num_threads=threads
        )

    def infer(self, tensor: Any) -> List[Any]:
        interpreter = self.interpreter
        try:
            interpreter.set_tensor(self.input_index, tensor)
            interpreter.invoke()
            return [interpreter.get_tensor(index) for index in self.output_indices]
        except (ValueError, RuntimeError) as exc:
            raise BackendError(INFERENCE, f"LiteRT inference failed: {exc}")


_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(uint8)": "uint8",
    "tensor(int8)": "int8",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(bool)": "bool",
}
_ORT_PROVIDERS = {
    "TensorRT": ["TensorrtExecutionProvider"],
    "CUDA": ["CUDAExecutionProvider"],
    "CPU": ["CPUExecutionProvider"],
}
_ORT_PREFERENCE = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def import_module_or_unavailable(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise BackendError(UNAVAILABLE, f"{name} is not installed ({exc})")


class OnnxBackend(Backend):
    """ONNX Runtime; the agent has already rewritten the model's declared input shape."""

    def __init__(self, request: Dict[str, Any]) -> None:
        ort = import_module_or_unavailable("onnxruntime")
        device = request.get("device")
        wanted = _ORT_PROVIDERS.get(device, _ORT_PREFERENCE) if device else _ORT_PREFERENCE
        providers = [p for p in wanted if p in ort.get_available_providers()]
        if not providers:
            raise BackendError(UNAVAILABLE, f"no execution provider among {wanted}")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = request.get("num_threads") or 0
        options.inter_op_num_threads = 1
        try:
            session = ort.InferenceSession(
                request["model"], sess_options=options, providers=providers
            )
        except Exception as exc:  # onnxruntime's errors derive from Exception only
            raise BackendError(
                LOAD, "ONNX Runtime could not load {}: {}".format(request["model"], exc)
            )
        inputs = session.get_inputs()
        if len(inputs) != 1:
            raise BackendError(LOAD, f"the model has {len(inputs)} inputs; one is supported")
        outputs = sorted(session.get_outputs(), key=lambda o: natural_key(str(o.name)))
        try:
            self.input = self._info(inputs[0])
            self.outputs = [self._info(o) for o in outputs]
        except KeyError as exc:
            raise BackendError(LOAD, f"unsupported element type {exc}")
        self.session = session
        self.input_name = self.input["name"]
        self.output_names = [o["name"] for o in self.outputs]

    @staticmethod
    def _info(arg: Any) -> Dict[str, Any]:
        shape = [d if isinstance(d, int) else -1 for d in (arg.shape or ())]
        return tensor_info(arg.name, shape, _ORT_TYPES[str(arg.type)])

    def infer(self, tensor: Any) -> List[Any]:
        try:
            return list(self.session.run(self.output_names, {self.input_name: tensor}))
        except Exception as exc:  # onnxruntime's errors derive from Exception only
            raise BackendError(INFERENCE, f"ONNX Runtime inference failed: {exc}")


def import_openvino() -> Any:
    """OpenVINO's Core home: `openvino` (2023.0+) or `openvino.runtime` (2022.x)."""
    ov = import_module_or_unavailable("openvino")
    if hasattr(ov, "Core"):
        return ov
    return import_module_or_unavailable("openvino.runtime")


class OpenVINOBackend(Backend):
    """OpenVINO on the device the profile names (MYRIAD only up to 2022.3, CPU, GPU)."""

    def __init__(self, request: Dict[str, Any]) -> None:
        ov = import_openvino()
        device = request.get("device") or "CPU"
        try:
            core = ov.Core()
            model = core.read_model(request["model"])
            if len(model.inputs) != 1:
                raise BackendError(
                    LOAD, f"the model has {len(model.inputs)} inputs; one is supported"
                )
            wanted = request.get("input_shape")
            if wanted:
                model.reshape({model.inputs[0]: ov.PartialShape([int(d) for d in wanted])})
            compiled = self._compile(core, model, device, request.get("precision"))
            self.request = compiled.create_infer_request()
        except BackendError:
            raise
        except Exception as exc:  # OpenVINO raises RuntimeError and its own types
            raise BackendError(
                LOAD, "OpenVINO could not load {} on {}: {}".format(request["model"], device, exc)
            )
        port = compiled.inputs[0]
        self.input = tensor_info(
            self._name(port, 0),
            list(port.get_partial_shape().get_min_shape()),
            port.get_element_type().to_dtype(),
        )
        named = sorted(
            ((self._name(o, i), i, o) for i, o in enumerate(compiled.outputs)),
            key=lambda item: (natural_key(item[0]), item[1]),
        )
        self.output_ports = [o for _, _, o in named]
        self.outputs = [
            tensor_info(
                name, list(o.get_partial_shape().get_min_shape()), o.get_element_type().to_dtype()
            )
            for name, _, o in named
        ]

    @staticmethod
    def _compile(core: Any, model: Any, device: str, precision: Optional[str]) -> Any:
        """Compiled for `device`; on the CPU in full precision unless FP16 is asked for, as the
        in-process plug-in does (a CPU with bf16 would otherwise choose it by itself)."""
        if not device.startswith("CPU") or precision == "fp16":
            return core.compile_model(model, device)
        try:
            return core.compile_model(model, device, {"INFERENCE_PRECISION_HINT": "f32"})
        except RuntimeError:  # an OpenVINO without that hint (older than 2022.1)
            return core.compile_model(model, device)

    @staticmethod
    def _name(port: Any, index: int) -> str:
        names = sorted(port.get_names())
        return names[0] if names else f"output_{index}"

    def infer(self, tensor: Any) -> List[Any]:
        try:
            results = self.request.infer({0: tensor})
            return [np.asarray(results[port]) for port in self.output_ports]
        except Exception as exc:  # OpenVINO raises RuntimeError for failed inferences
            raise BackendError(INFERENCE, f"OpenVINO inference failed: {exc}")


# --- TensorRT (JetPack 4.6: TensorRT 8.2 for Python 3.6) --------------------------------------

_CUDART_NAMES = ("libcudart.so", "libcudart.so.10.2", "libcudart.so.11.0", "libcudart.so.12")
_HOST_TO_DEVICE, _DEVICE_TO_HOST = 1, 2


class CudaMemory:
    """Device buffers and copies: pycuda when installed, else the CUDA runtime via ctypes."""

    def __init__(self) -> None:
        self._context = None  # type: Any
        self._allocations = []  # type: List[Any]
        try:
            driver = importlib.import_module("pycuda.driver")
        except ImportError:
            driver = None
        self._driver = driver
        if driver is not None:
            driver.init()
            self._context = driver.Device(0).make_context()
            return
        import ctypes

        self._ctypes = ctypes
        failures = []
        for name in _CUDART_NAMES:
            try:
                self._lib = ctypes.CDLL(name)
                return
            except OSError as exc:
                failures.append(str(exc))
        raise BackendError(UNAVAILABLE, "no pycuda and no CUDA runtime: " + "; ".join(failures))

    def _check(self, status: int, what: str) -> None:
        if status != 0:
            raise BackendError(INFERENCE, f"{what} failed with CUDA error {status}")

    def alloc(self, nbytes: int) -> int:
        if self._driver is not None:
            allocation = self._driver.mem_alloc(max(nbytes, 1))
            self._allocations.append(allocation)
            return int(allocation)
        pointer = self._ctypes.c_void_p()
        self._check(self._lib.cudaMalloc(self._ctypes.byref(pointer), max(nbytes, 1)), "cudaMalloc")
        self._allocations.append(pointer.value)
        return int(pointer.value or 0)

    def to_device(self, pointer: int, host: Any) -> None:
        if self._driver is not None:
            self._driver.memcpy_htod(pointer, host)
            return
        status = self._lib.cudaMemcpy(
            self._ctypes.c_void_p(pointer),
            self._ctypes.c_void_p(host.ctypes.data),
            self._ctypes.c_size_t(host.nbytes),
            _HOST_TO_DEVICE,
        )
        self._check(status, "cudaMemcpy to the device")

    def to_host(self, host: Any, pointer: int) -> None:
        if self._driver is not None:
            self._driver.memcpy_dtoh(host, pointer)
            return
        status = self._lib.cudaMemcpy(
            self._ctypes.c_void_p(host.ctypes.data),
            self._ctypes.c_void_p(pointer),
            self._ctypes.c_size_t(host.nbytes),
            _DEVICE_TO_HOST,
        )
        self._check(status, "cudaMemcpy to the host")

    def close(self) -> None:
        if self._driver is not None:
            for allocation in self._allocations:
                allocation.free()
            if self._context is not None:
                self._context.pop()
        else:
            for pointer in self._allocations:
                self._lib.cudaFree(self._ctypes.c_void_p(pointer))
        self._allocations = []
        self._context = None


def tensorrt_api(trt: Any) -> str:
    """`tensors` (named I/O tensors, TensorRT 8.5+) or `bindings` (8.0-8.4, JetPack 4.6)."""
    match = re.match(r"^(\d+)\.(\d+)", str(trt.__version__))
    if match is None:
        raise BackendError(UNAVAILABLE, f"unrecognised TensorRT version {trt.__version__}")
    major, minor = int(match.group(1)), int(match.group(2))
    return "tensors" if (major, minor) >= (8, 5) else "bindings"


# the in-process plug-in (agent.runtimes.tensorrt) uses this reason and calibrator too
INT8_NEEDS_CALIBRATION = "INT8 needs the calibration cache the bundle carries"


def replaying_calibrator(trt: Any, cache: bytes) -> Any:
    """An INT8 calibrator that only replays the calibration cache the bundle carries."""

    class CacheCalibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc,unused-ignore]
        def __init__(self) -> None:
            super().__init__()

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names: Any) -> None:
            return None  # no images: the cache holds the scales

        def read_calibration_cache(self) -> bytes:
            return cache

        def write_calibration_cache(self, data: Any) -> None:
            return None

    return CacheCalibrator()


def read_calibration(request: Dict[str, Any], precision: str) -> Optional[bytes]:
    """The INT8 calibration cache the request names (None for other precisions).

    Raises BackendError when INT8 comes without a cache or the cache cannot be read.
    """
    if precision != "int8":
        return None
    path = request.get("calibration_cache")
    if not path:
        raise BackendError(LOAD, INT8_NEEDS_CALIBRATION)
    try:
        with open(str(path), "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise BackendError(LOAD, f"TensorRT cannot read the calibration cache {path}: {exc}")


def engine_cache_name(
    onnx: bytes, trt_version: str, precision: str, calibration: Optional[bytes]
) -> str:
    """The engine's file name: model digest, TensorRT version, precision and, for INT8, the
    calibration's digest folded in as the in-process plug-in does, so an engine built with one
    calibration is never reused for another."""
    import hashlib

    name = f"{hashlib.sha256(onnx).hexdigest()[:24]}-trt{trt_version}-{precision}"
    if calibration is not None:
        digest = hashlib.sha256(calibration).hexdigest()
        settings = hashlib.sha256(f"{precision}|{digest}".encode()).hexdigest()
        name = f"{name}-{settings[:8]}"
    return name + ".engine"


class TensorRTBackend(Backend):
    """An engine built on the device from the ONNX model (input shape already fixed by the
    agent), cached per model digest, TensorRT version, precision and INT8 calibration; run
    synchronously."""

    def __init__(self, request: Dict[str, Any]) -> None:
        precision = request.get("precision") or "fp16"
        # refused before TensorRT is touched, as the in-process plug-in refuses it at creation
        self.calibration = read_calibration(request, precision)
        trt = import_module_or_unavailable("tensorrt")
        self.api = tensorrt_api(trt)
        self.cuda = CudaMemory()
        try:
            self._load(trt, request)
        except BaseException:
            self.cuda.close()
            raise

    def _load(self, trt: Any, request: Dict[str, Any]) -> None:
        with open(request["model"], "rb") as handle:
            onnx = handle.read()
        precision = request.get("precision") or "fp16"
        logger = trt.Logger(trt.Logger.WARNING)
        serialized = self._cached_or_built(
            trt, logger, onnx, precision, self.calibration, request.get("cache_dir")
        )
        engine = trt.Runtime(logger).deserialize_cuda_engine(serialized)
        if engine is None:
            raise BackendError(LOAD, "TensorRT could not deserialize the engine")
        self.engine = engine
        self.context = engine.create_execution_context()
        io = self._io(trt)
        inputs = [t for t in io if t[1]]
        if len(inputs) != 1:
            raise BackendError(LOAD, f"the engine has {len(inputs)} inputs; one is supported")
        name, _, shape, dtype = inputs[0]
        if any(d < 0 for d in shape):
            raise BackendError(LOAD, f"the engine's input {shape} is not fixed")
        self.input = tensor_info(name, shape, dtype)
        pointers = {name: self.cuda.alloc(int(np.prod(shape)) * np.dtype(dtype).itemsize)}
        self.input_pointer = pointers[name]
        outputs = sorted((t for t in io if not t[1]), key=lambda t: natural_key(t[0]))
        self.host_outputs = []  # type: List[Any]
        self.output_pointers = []  # type: List[int]
        for out_name, _, out_shape, out_dtype in outputs:
            host = np.empty(out_shape, dtype=out_dtype)
            self.host_outputs.append(host)
            pointers[out_name] = self.cuda.alloc(host.nbytes)
            self.output_pointers.append(pointers[out_name])
        self.outputs = [tensor_info(n, s, d) for n, _, s, d in outputs]
        # binding order is the engine's I/O order in both API generations
        self.bindings = [pointers[t[0]] for t in io]

    def _cached_or_built(
        self,
        trt: Any,
        logger: Any,
        onnx: bytes,
        precision: str,
        calibration: Optional[bytes],
        cache_dir: Optional[str],
    ) -> bytes:
        key = engine_cache_name(onnx, str(trt.__version__), precision, calibration)
        path = os.path.join(cache_dir, key) if cache_dir else None
        if path is not None and os.path.isfile(path):
            with open(path, "rb") as handle:
                return handle.read()
        serialized = self._build(trt, logger, onnx, precision, calibration)
        if path is not None:
            os.makedirs(cache_dir or ".", exist_ok=True)
            with open(path + ".part", "wb") as handle:
                handle.write(serialized)
            os.replace(path + ".part", path)  # a crash mid-write leaves no half engine
        return serialized

    @staticmethod
    def _build(
        trt: Any, logger: Any, onnx: bytes, precision: str, calibration: Optional[bytes]
    ) -> bytes:
        builder = trt.Builder(logger)
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH))
        parser = trt.OnnxParser(network, logger)
        if not parser.parse(onnx):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise BackendError(LOAD, f"TensorRT's ONNX parser refused the model: {errors}")
        config = builder.create_builder_config()
        if hasattr(config, "set_memory_pool_limit"):
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 1 << 28)
        else:
            config.max_workspace_size = 1 << 28  # 256 MiB: fits a 4 GB Nano
        # as in-process: INT8 also allows FP16 kernels for layers INT8 does not cover
        if precision in ("fp16", "int8") and builder.platform_has_fast_fp16:
            config.set_flag(trt.BuilderFlag.FP16)
        if precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
            # held here until the build is done: TensorRT calls back into it while building
            calibrator = replaying_calibrator(trt, calibration or b"")
            config.int8_calibrator = calibrator
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise BackendError(LOAD, "TensorRT could not build an engine for this model")
        return bytes(serialized)

    def _io(self, trt: Any) -> List[Tuple[str, bool, Tuple[int, ...], Any]]:
        engine = self.engine
        if self.api == "tensors":
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

    def infer(self, tensor: Any) -> List[Any]:
        self.cuda.to_device(self.input_pointer, np.ascontiguousarray(tensor))
        try:
            ok = self.context.execute_v2(self.bindings)
        except Exception as exc:  # TensorRT raises plain RuntimeError/TypeError
            raise BackendError(INFERENCE, f"TensorRT execution failed: {exc}")
        if not ok:
            raise BackendError(INFERENCE, "TensorRT execution failed")
        for host, pointer in zip(self.host_outputs, self.output_pointers):
            self.cuda.to_host(host, pointer)
        return self.host_outputs

    def close(self) -> None:
        self.context = None
        self.engine = None
        self.cuda.close()


def open_backend(request: Dict[str, Any]) -> Backend:
    """The backend for `request["key"]`; raises BackendError."""
    key = request.get("key")
    if key == "litert":
        return TFLiteBackend(request, edgetpu=False)
    if key == "edgetpu":
        return TFLiteBackend(request, edgetpu=True)
    if key == "onnx":
        return OnnxBackend(request)
    if key == "openvino":
        return OpenVINOBackend(request)
    if key == "tensorrt":
        return TensorRTBackend(request)
    raise BackendError(UNAVAILABLE, f"the runtime worker has no {key!r} backend")


# --- probes: never raise -------------------------------------------------------------------


def probe(key: str) -> Dict[str, Any]:
    """Whether `key` loads under this interpreter, why (not), and the devices it offers."""
    where = f"python {platform.python_version()}"
    if NUMPY_MISSING:
        return {
            "key": key,
            "available": False,
            "reason": f"{NUMPY_MISSING} ({where})",
            "devices": [],
        }
    try:
        reason, devices = _probe(key)
    except BackendError as exc:
        return {"key": key, "available": False, "reason": f"{exc} ({where})", "devices": []}
    except Exception as exc:  # a vendor probe must not take the worker down
        return {
            "key": key,
            "available": False,
            "reason": f"probe failed: {exc!r} ({where})",
            "devices": [],
        }
    return {
        "key": key,
        "available": True,
        "reason": f"{reason}; worker {where}",
        "devices": devices,
    }


def _probe(key: str) -> Tuple[str, List[str]]:
    if key == "litert":
        _, source = import_tflite()
        return f"{source} on CPU", ["CPU"]
    if key == "edgetpu":
        return _probe_edgetpu()
    if key == "onnx":
        ort = import_module_or_unavailable("onnxruntime")
        usable = [p for p in _ORT_PREFERENCE if p in ort.get_available_providers()]
        if not usable:
            raise BackendError(UNAVAILABLE, f"onnxruntime offers none of {_ORT_PREFERENCE}")
        names = {
            "TensorrtExecutionProvider": "TensorRT",
            "CUDAExecutionProvider": "CUDA",
            "CPUExecutionProvider": "CPU",
        }
        version = getattr(ort, "__version__", "unknown")
        return "onnxruntime {}; providers {}".format(version, ", ".join(usable)), [
            names[p] for p in usable
        ]
    if key == "tensorrt":
        trt = import_module_or_unavailable("tensorrt")
        tensorrt_api(trt)
        CudaMemory().close()
        return f"TensorRT {trt.__version__} on CUDA", ["CUDA"]
    if key == "openvino":
        ov = import_openvino()
        devices = list(ov.Core().available_devices)
        if not devices:
            raise BackendError(UNAVAILABLE, "OpenVINO sees no device")
        return "OpenVINO; devices {}".format(", ".join(devices)), sorted(
            {d.split(".", 1)[0] for d in devices}
        )
    raise BackendError(UNAVAILABLE, f"the runtime worker has no {key!r} backend")


def _probe_edgetpu() -> Tuple[str, List[str]]:
    import ctypes

    pycoral = import_pycoral()
    source = "pycoral"
    if pycoral is None:
        _, source = import_tflite()
    try:
        ctypes.CDLL(edgetpu_library())
    except OSError as exc:
        raise BackendError(UNAVAILABLE, f"{edgetpu_library()} not loadable ({exc})")
    if pycoral is not None and not pycoral.list_edge_tpus():
        raise BackendError(UNAVAILABLE, "pycoral finds no Edge TPU")
    if pycoral is None and not os.path.exists("/dev/apex_0"):
        raise BackendError(
            UNAVAILABLE, "no /dev/apex_0 (a USB stick is found only through pycoral)"
        )
    return f"{source} with {edgetpu_library()}", ["EDGETPU"]


# --- the request loop ----------------------------------------------------------------------


class Worker:
    """Serves requests for one model at a time."""

    def __init__(self) -> None:
        self.backend = None  # type: Optional[Backend]
        self.inputs = None  # type: Optional[SharedRegion]
        self.outputs = None  # type: Optional[SharedRegion]
        self.out_path = ""

    def handle(self, request: Dict[str, Any]) -> Dict[str, Any]:
        op = request.get("op")
        if op == "probe":
            return dict(probe(str(request.get("key"))), ok=True)
        if op == "load":
            self.close()
            try:
                self.backend = open_backend(request)
            except (BackendError, KeyError):
                raise
            except Exception as exc:  # a vendor package failing in a way of its own
                raise BackendError(LOAD, f"{request.get('key')} failed to load: {exc!r}")
            self.inputs = None
            self.outputs = None
            self.out_path = str(request["out_path"])
            return {"ok": True, "input": self.backend.input, "outputs": self.backend.outputs}
        if op == "infer":
            return self.infer(request)
        raise BackendError(PROTOCOL, f"unknown request {op!r}")

    def close(self) -> None:
        backend, self.backend = self.backend, None
        if backend is not None:
            backend.close()

    def infer(self, request: Dict[str, Any]) -> Dict[str, Any]:
        if self.backend is None:
            raise BackendError(INFERENCE, "no model loaded")
        size = int(request["in_size"])
        if (
            self.inputs is None
            or self.inputs.size != size
            or self.inputs.path != request["in_path"]
        ):
            try:
                self.inputs = SharedRegion(str(request["in_path"]), size, create=False)
            except (OSError, ValueError) as exc:
                raise BackendError(INFERENCE, f"cannot map the input: {exc}")
        tensor = self.inputs.array(0, request["shape"], request["dtype"])
        started = time.perf_counter()
        try:
            results = [np.ascontiguousarray(r) for r in self.backend.infer(tensor)]
        except BackendError:
            raise
        except Exception as exc:  # a vendor package failing in a way of its own
            raise BackendError(INFERENCE, f"inference failed: {exc!r}")
        infer_ms = (time.perf_counter() - started) * 1000.0
        needed = sum(aligned(r.nbytes) for r in results) or ALIGN
        if self.outputs is None or self.outputs.size < needed:
            try:
                self.outputs = SharedRegion(
                    self.out_path, aligned(needed + needed // 2), create=True
                )
            except (OSError, ValueError) as exc:
                raise BackendError(INFERENCE, f"cannot map the outputs: {exc}")
        placed = []
        offset = 0
        for result in results:
            self.outputs.array(offset, result.shape, result.dtype)[...] = result
            placed.append([offset, list(result.shape), result.dtype.name])
            offset += aligned(result.nbytes)
        return {
            "ok": True,
            "seq": request.get("seq"),
            "out_size": self.outputs.size,
            "outputs": placed,
            # the runtime's own time, so the agent can tell it from the worker's overhead
            "infer_ms": round(infer_ms, 3),
        }


def serve(requests: IO[bytes], replies: IO[bytes]) -> int:
    """Answer requests until `close` or end of input; returns the exit status."""
    worker = Worker()
    hello = {"ok": True, "op": "hello", "python": platform.python_version(), "pid": os.getpid()}
    if NUMPY_MISSING:
        write_message(replies, dict(hello, ok=False, kind=UNAVAILABLE, message=NUMPY_MISSING))
        return 3
    write_message(replies, hello)
    while True:
        try:
            request = read_message(requests)
        except ChannelClosed:
            worker.close()
            return 0
        except ValueError as exc:
            sys.stderr.write(f"event=worker_bad_request error={str(exc)!r}\n")
            return 2
        if request.get("op") == "close":
            worker.close()
            write_message(replies, {"ok": True})
            return 0
        try:
            reply = worker.handle(request)
        except BackendError as exc:
            reply = {
                "ok": False,
                "kind": exc.kind,
                "message": str(exc)[:4096],
                "seq": request.get("seq"),
            }
        except (KeyError, TypeError, ValueError) as exc:
            reply = {"ok": False, "kind": PROTOCOL, "message": f"bad request: {exc!r}"[:4096]}
        write_message(replies, reply)


def main(argv: List[str]) -> int:
    if len(argv) > 1 and argv[1] == "--probe":
        print(json.dumps([probe(key) for key in argv[2:]]))
        return 0
    # the channel keeps the real stdout; anything a vendor library prints goes to stderr
    channel = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    requests = os.fdopen(os.dup(0), "rb")
    return serve(requests, channel)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
