"""LiteRT (TensorFlow Lite) on the CPU: `ai-edge-litert`, else the frozen `tflite-runtime`.

Outputs are returned sorted by output tensor name (digit runs compared as numbers, so
`Identity_2` comes before `Identity_10`), ties broken by tensor index. Names survive model
conversion far better than tensor indices do, and the same rule works for every runtime that
names its outputs, so a decoder sees one order whichever runtime ran the model.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agent.runtimes.base import (
    InferenceError,
    ModelLoadError,
    Runtime,
    RuntimeProbe,
    RuntimeUnavailableError,
    TensorDetails,
)

logger = logging.getLogger(__name__)

# (module, distribution) in order of preference: tflite-runtime is frozen at 2.14 and needs
# numpy < 2, so it is only the fallback for devices that cannot install ai-edge-litert.
_INTERPRETER_MODULES = (
    ("ai_edge_litert.interpreter", "ai-edge-litert"),
    ("tflite_runtime.interpreter", "tflite-runtime"),
)


def _import_interpreter() -> tuple[Any, str]:
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


def _natural_key(name: str) -> tuple[Any, ...]:
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def _details(raw: dict[str, Any]) -> TensorDetails:
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


class LiteRTRuntime(Runtime):
    """A LiteRT interpreter on the CPU (XNNPACK where the build has it)."""

    KEY = "litert"

    def __init__(self, *, num_threads: int | None = None) -> None:
        super().__init__(num_threads=num_threads)
        self._interpreter: Any = None
        self._input: TensorDetails | None = None
        self._outputs: list[TensorDetails] = []
        # looked up once at load so the per-frame path does no detail lookups
        self._input_index = -1
        self._output_indices: tuple[int, ...] = ()
        self.source = ""

    @classmethod
    def probe(cls) -> RuntimeProbe:
        try:
            _, source = _import_interpreter()
        except RuntimeUnavailableError as exc:
            return RuntimeProbe(key=cls.KEY, available=False, reason=str(exc))
        return RuntimeProbe(key=cls.KEY, available=True, reason=f"{source} on CPU")

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
            key=lambda d: (_natural_key(str(d["name"])), int(d["index"])),
        )
        self._interpreter = interpreter
        self._input = _details(inputs[0])
        self._input_index = int(inputs[0]["index"])
        self._outputs = [_details(d) for d in raw_outputs]
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

    def _open_interpreter(self, model_path: Path) -> tuple[Any, str]:
        """A new interpreter on the model, and where it came from; the Edge TPU plugin adds
        its delegate here.

        Raises RuntimeUnavailableError or ModelLoadError.
        """
        interpreter_class, source = _import_interpreter()
        try:
            interpreter = interpreter_class(
                model_path=str(model_path), num_threads=self.num_threads
            )
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelLoadError(f"LiteRT could not load {model_path}: {exc}") from exc
        return interpreter, source

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
