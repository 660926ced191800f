"""The runtime plugin interface: one module per inference runtime, found by key.

A runtime module `agent.runtimes.<key>` defines one `Runtime` subclass whose `KEY` is `<key>`,
one of protocol.events.RuntimeKey.
Modules are imported only when asked for, and a runtime whose vendor package is missing is
logged and reported as unavailable instead of stopping the agent.
"""

from __future__ import annotations

import abc
import importlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from protocol.events import RuntimeKey

if TYPE_CHECKING:  # numpy is imported only once a model is loaded, to keep an idle agent small
    import numpy as np

logger = logging.getLogger(__name__)

# the device a plain CPU runtime runs on, in the spelling device profiles use
CPU_DEVICE = "CPU"

_R = TypeVar("_R", bound="Runtime")


@dataclass(frozen=True)
class RuntimeProbe:
    """Whether a runtime can run on this device, and why (not)."""

    key: str
    available: bool
    reason: str
    # devices this runtime can target here, in profile spelling ("CPU", "CUDA", "MYRIAD");
    # empty means the plugin does not say, and any device a profile names is tried
    devices: frozenset[str] = frozenset()


@dataclass(frozen=True)
class TensorDetails:
    """Shape, element type and quantisation of one model input or output."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    # (scale, zero_point); scale 0.0 means the tensor is not quantised
    quantization: tuple[float, int] = (0.0, 0)

    @property
    def quantized(self) -> bool:
        return self.quantization[0] != 0.0


@dataclass(frozen=True)
class RuntimeOptions:
    """What a device profile and a bundle variant ask of a runtime beyond the model file."""

    # a device profile's device name ("CPU", "CUDA", "EDGETPU", "MYRIAD"); None: plugin's choice
    device: str | None = None
    # precision to build for, where the runtime compiles the model itself (TensorRT)
    precision: str | None = None
    # a folder the runtime may keep compiled artefacts in (TensorRT engines) across restarts
    cache_dir: Path | None = None
    # an INT8 calibration cache carried in the bundle
    calibration_cache: Path | None = None


class RuntimePluginError(Exception):
    """Base of the errors a runtime plugin raises."""


class RuntimeUnavailableError(RuntimePluginError):
    """The runtime's package or device is missing."""


class ModelLoadError(RuntimePluginError):
    """The model file could not be loaded by this runtime."""


class InferenceError(RuntimePluginError):
    """An input did not fit the loaded model, or the runtime failed while running it."""


class Runtime(abc.ABC):
    """One inference runtime holding at most one loaded model."""

    KEY: ClassVar[str]

    def __init__(self, *, num_threads: int | None = None) -> None:
        """`num_threads` caps the CPU threads the runtime may use; None lets it choose.

        Raises ValueError for a count below one.
        """
        if num_threads is not None and num_threads < 1:
            raise ValueError("num_threads must be at least 1")
        self.num_threads = num_threads

    @classmethod
    def create(
        cls: type[_R], *, num_threads: int | None = None, options: RuntimeOptions | None = None
    ) -> _R:
        """A runtime set up as `options` ask (device, build precision, cache folder).

        Plugins that can target more than the CPU override this; a CPU runtime runs the
        variant's own precision. Raises RuntimeUnavailableError for a device it cannot target.
        """
        device = options.device if options is not None else None
        if device not in (None, CPU_DEVICE):
            raise RuntimeUnavailableError(f"the {cls.KEY} plugin cannot target device {device}")
        return cls(num_threads=num_threads)

    @classmethod
    @abc.abstractmethod
    def probe(cls) -> RuntimeProbe:
        """Check that the runtime imports and its device is present; never raises."""

    @abc.abstractmethod
    def load(self, model_path: Path, *, input_shape: Sequence[int] | None = None) -> None:
        """Load a model and prepare it to run.

        `input_shape` is the batch-of-one input the bundle declares (-1 for a free dimension);
        a plugin plans for it where the model file declares another or a free size.
        Raises RuntimeUnavailableError or ModelLoadError.
        """

    # set by a plugin's `load` (and reset by `close`); the accessors below read them
    _input: TensorDetails | None = None
    _outputs: Sequence[TensorDetails] = ()
    _dynamic_axes: tuple[int, ...] = ()

    def input_details(self) -> TensorDetails:
        """The single input of the loaded model; a free dimension is -1.

        Raises ModelLoadError before `load`.
        """
        if self._input is None:
            raise ModelLoadError("no model loaded")
        return self._input

    def output_details(self) -> list[TensorDetails]:
        """The outputs, in the same order `infer` returns them. Raises ModelLoadError."""
        if self._input is None:
            raise ModelLoadError("no model loaded")
        return list(self._outputs)

    def _expected_input(self, tensor: np.ndarray) -> TensorDetails:
        """The loaded model's input, if `tensor` fits it. Raises InferenceError."""
        expected = self._input
        if expected is None:
            raise InferenceError("no model loaded")
        if tensor.dtype != expected.dtype or not input_fits(
            tensor.shape, expected.shape, self._dynamic_axes
        ):
            raise InferenceError(
                f"input {tensor.shape} {tensor.dtype} does not fit the model's "
                f"{expected.shape} {expected.dtype}"
            )
        return expected

    def input_buffer(self, shape: Sequence[int], dtype: np.dtype[Any]) -> np.ndarray:
        """A buffer to preprocess a frame into and hand to `infer`; a runtime whose input lives
        elsewhere (a worker's shared memory) returns a view of it, so the frame is not copied."""
        import numpy as np

        return np.empty(tuple(shape), dtype=dtype)

    @abc.abstractmethod
    def infer(self, tensor: np.ndarray) -> list[np.ndarray]:
        """Run the model on one input tensor; returns the outputs in a stable order.

        Raises InferenceError.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Release the model and its memory; safe to call twice."""

    def __enter__(self) -> Runtime:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def input_fits(shape: tuple[int, ...], expected: tuple[int, ...], dynamic: tuple[int, ...]) -> bool:
    """Whether a tensor shape fits a model input whose `dynamic` axes may take any size."""
    if not dynamic:
        return shape == expected
    if len(shape) != len(expected):
        return False
    return all(s == e or e < 0 for s, e in zip(shape, expected, strict=True))


def load_runtime_class(key: str) -> type[Runtime] | None:
    """Import `agent.runtimes.<key>` and return its Runtime class.

    Returns None (and logs why) when the module or a package it imports is missing.
    Raises ValueError for a key that is not a RuntimeKey and LookupError when the module defines
    no runtime with that key (both programming errors, not device conditions).
    """
    runtime_class, _ = _import_runtime(key)
    return runtime_class


def probe_runtime(key: str) -> RuntimeProbe:
    """Probe one runtime by key; a missing module or package is reported, not raised."""
    try:
        runtime_class, why_not = _import_runtime(key)
    except (ValueError, LookupError) as exc:
        return RuntimeProbe(key=key, available=False, reason=str(exc))
    if runtime_class is None:
        return RuntimeProbe(key=key, available=False, reason=why_not)
    try:
        return runtime_class.probe()
    except Exception as exc:  # a vendor probe must not take the agent down
        logger.warning("runtime_probe_crashed key=%s error=%r", key, exc)
        return RuntimeProbe(key=key, available=False, reason=f"probe failed: {exc!r}")


def _import_runtime(key: str) -> tuple[type[Runtime] | None, str]:
    try:
        # only the keys both sides know name a module: nothing else is imported from here
        name = RuntimeKey(key).value
    except ValueError:
        known = ", ".join(k.value for k in RuntimeKey)
        raise ValueError(f"unknown runtime key {key!r:.40}; runtimes are {known}") from None
    module_name = f"{__package__}.{name}"
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        missing = getattr(exc, "name", None)
        if missing == module_name:
            # no plugin of that name in this agent: a fact about the build, not a fault
            logger.info("runtime_not_included key=%s", name)
            return None, f"this agent has no {name!r} runtime plugin"
        logger.warning(
            "runtime_import_failed key=%s module=%s missing=%s error=%s",
            name,
            module_name,
            missing,
            exc,
        )
        return None, f"package {missing or '?'} is not installed ({exc})"
    for value in vars(module).values():
        if (
            isinstance(value, type)
            and issubclass(value, Runtime)
            and value is not Runtime
            and getattr(value, "KEY", None) == name
            and not getattr(value, "__abstractmethods__", None)
        ):
            return value, ""
    raise LookupError(f"module {module_name} defines no Runtime with KEY {name!r}")
