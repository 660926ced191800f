"""What the runtime plug-ins share, so that no plug-in imports another.

- `natural_key`: the one output order every plug-in follows (output names sorted with digit runs
  compared as numbers), so a decoder sees one order whichever runtime ran the model;
- the few parts of the ONNX protobuf that read and replace a model's input shape (ONNX Runtime,
  TensorRT and OpenCV load ONNX files), on the wire format so the agent needs no `onnx` package;
- the TFLite interpreter (`ai-edge-litert`, else `tflite-runtime`) and a runtime built on it,
  which LiteRT runs on the CPU and the Edge TPU plug-in runs with its delegate.
"""

from __future__ import annotations

import abc
import importlib
import importlib.metadata
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
    RuntimeUnavailableError,
    TensorDetails,
)

logger = logging.getLogger(__name__)


def natural_key(name: str) -> tuple[Any, ...]:
    """Sort key comparing digit runs as numbers, so `Identity_2` sorts before `Identity_10`."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


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


# --- the TFLite interpreter ------------------------------------------------------------------

# (module, distribution) in order of preference: tflite-runtime is frozen at 2.14 and needs
# numpy < 2, so it is only the fallback for devices that cannot install ai-edge-litert.
_INTERPRETER_MODULES = (
    ("ai_edge_litert.interpreter", "ai-edge-litert"),
    ("tflite_runtime.interpreter", "tflite-runtime"),
)


def import_interpreter() -> tuple[Any, str]:
    """The Interpreter class and a description of where it came from.

    Raises RuntimeUnavailableError when neither package imports.
    """
    failures = []
    for module_name, distribution in _INTERPRETER_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            failures.append(f"{module_name}: {exc}")
            continue
        try:
            version = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            version = "unknown"
        return module.Interpreter, f"{distribution} {version}"
    raise RuntimeUnavailableError("no LiteRT interpreter: " + "; ".join(failures))


def _tflite_details(raw: dict[str, Any]) -> TensorDetails:
    scale, zero_point = raw.get("quantization", (0.0, 0))
    return TensorDetails(
        name=str(raw["name"]),
        shape=tuple(int(d) for d in raw["shape"]),
        dtype=np.dtype(raw["dtype"]),
        quantization=(float(scale), int(zero_point)),
    )


def resize_input(interpreter: Any, detail: dict[str, Any], wanted: Sequence[int]) -> None:
    """Resize the interpreter's input to `wanted` where it differs (-1 keeps the model's size).

    Not strict: a fully convolutional model exported at a fixed size runs at others too, and
    one that cannot fails in allocate_tensors. Raises ValueError for a rank mismatch.
    """
    current = [int(d) for d in detail["shape"]]
    if len(wanted) != len(current):
        raise ValueError(f"input shape {tuple(wanted)} does not fit the model's {tuple(current)}")
    target = [c if int(w) < 0 else int(w) for w, c in zip(wanted, current, strict=True)]
    if target != current:
        interpreter.resize_tensor_input(int(detail["index"]), target, strict=False)


class TFLiteRuntime(Runtime):
    """A TFLite interpreter holding one model; a subclass says how the interpreter is opened
    (LiteRT on the CPU, or with the Edge TPU delegate)."""

    def __init__(self, *, num_threads: int | None = None) -> None:
        super().__init__(num_threads=num_threads)
        self._interpreter: Any = None
        self._input: TensorDetails | None = None
        self._outputs: list[TensorDetails] = []
        # looked up once at load so the per-frame path does no detail lookups
        self._input_index = -1
        self._output_indices: tuple[int, ...] = ()
        self.source = ""

    def load(self, model_path: Path, *, input_shape: Sequence[int] | None = None) -> None:
        """Load a .tflite model; `input_shape` (-1 keeps the model's size on that axis)
        resizes the input when the model declares another size.

        Raises RuntimeUnavailableError or ModelLoadError.
        """
        # a failed load leaves any model already loaded in place
        interpreter, source = self._open_interpreter(model_path)
        try:
            inputs = interpreter.get_input_details()
            if len(inputs) != 1:
                raise ModelLoadError(f"{model_path} has {len(inputs)} inputs; one is supported")
            if input_shape is not None:
                resize_input(interpreter, inputs[0], input_shape)
            interpreter.allocate_tensors()
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelLoadError(f"LiteRT could not load {model_path}: {exc}") from exc

        inputs = interpreter.get_input_details()
        raw_outputs = sorted(
            interpreter.get_output_details(),
            key=lambda d: (natural_key(str(d["name"])), int(d["index"])),
        )
        self._interpreter = interpreter
        self._input = _tflite_details(inputs[0])
        self._input_index = int(inputs[0]["index"])
        self._outputs = [_tflite_details(d) for d in raw_outputs]
        self._output_indices = tuple(int(d["index"]) for d in raw_outputs)
        self.source = source
        logger.info(
            "runtime_loaded key=%s source=%r model=%s input=%s outputs=%s",
            self.KEY,
            source,
            model_path,
            self._input.shape,
            [o.name for o in self._outputs],
        )

    @abc.abstractmethod
    def _open_interpreter(self, model_path: Path) -> tuple[Any, str]:
        """A new interpreter on the model, and where it came from.

        Raises RuntimeUnavailableError or ModelLoadError.
        """

    def infer(self, tensor: np.ndarray) -> list[np.ndarray]:
        self._expected_input(tensor)
        interpreter = self._interpreter
        try:
            # set_tensor copies into the interpreter's own input buffer (no allocation);
            # get_tensor returns copies, so outputs outlive the next invoke.
            interpreter.set_tensor(self._input_index, tensor)
            interpreter.invoke()
            return [interpreter.get_tensor(index) for index in self._output_indices]
        except (ValueError, RuntimeError) as exc:
            raise InferenceError(f"LiteRT inference failed: {exc}") from exc

    def close(self) -> None:
        self._interpreter = None
        self._input = None
        self._outputs = []
        self._input_index = -1
        self._output_indices = ()
