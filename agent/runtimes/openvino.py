"""OpenVINO: IR (.xml + .bin), ONNX and TFLite models on the CPU, an Intel GPU or an NPU.

Outputs are returned sorted by output name (digit runs compared as numbers), the rule every
runtime plugin follows. A converted model may carry several names per output tensor (a
TensorFlow graph keeps both `add:0` and `detection_classes:0`); the plugin names an output by
the first of its names without a `/` scope, so bundle builds set one clean name per output.

The Intel Neural Compute Stick 2 (MYRIAD plugin) is supported by OpenVINO up to 2022.3 LTS
only; on later versions `device="MYRIAD"` is refused with that reason so the agent falls back.
"""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agent.runtimes._shared import natural_key
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

FORMATS = (".xml", ".onnx", ".tflite")
DEVICES = ("CPU", "GPU", "NPU", "MYRIAD")
# the last release line whose wheels still carry the MYRIAD plugin
_LAST_MYRIAD_RELEASE = (2022, 3)
_DEVICE_RE = re.compile(r"^(CPU|GPU|NPU|MYRIAD)(\.\d+)?$")

_OV_TYPES = {
    "f32": np.float32,
    "f16": np.float16,
    "f64": np.float64,
    "u8": np.uint8,
    "i8": np.int8,
    "i32": np.int32,
    "i64": np.int64,
    "boolean": np.bool_,
}


def _import_openvino() -> Any:
    try:
        return importlib.import_module("openvino")
    except ImportError as exc:
        raise RuntimeUnavailableError(f"openvino is not installed ({exc})") from exc


def release(version: str) -> tuple[int, int]:
    """(year, minor) of an OpenVINO version string such as '2026.4.1-22982-...'; (0, 0) if odd."""
    match = re.match(r"^(\d+)\.(\d+)", version)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def myriad_note(version: str) -> str:
    """What this OpenVINO version means for the NCS2."""
    if release(version) > _LAST_MYRIAD_RELEASE:
        return "MYRIAD (NCS2) is not supported after OpenVINO 2022.3"
    return "MYRIAD (NCS2) is supported by this version when a stick is attached"


def _port_name(names: set[str], index: int) -> str:
    # scope-free names are the ones the model's author gave; `/`-scoped ones are internal
    plain = sorted((n for n in names if "/" not in n), key=natural_key)
    if plain:
        return plain[0]
    ordered = sorted(names, key=natural_key)
    return ordered[0] if ordered else f"output_{index}"


def _np_type(element_type: Any) -> np.dtype:
    try:
        return np.dtype(_OV_TYPES[element_type.get_type_name()])
    except KeyError as exc:
        raise ModelLoadError(f"unsupported element type {element_type}") from exc


def _shape(partial: Any) -> tuple[int, ...]:
    return tuple(d.get_length() if d.is_static else -1 for d in partial)


class OpenVINORuntime(Runtime):
    """An OpenVINO compiled model with one reused infer request."""

    KEY = RuntimeKey.OPENVINO

    def __init__(
        self,
        *,
        num_threads: int | None = None,
        device: str = "CPU",
        inference_precision: str | None = "f32",
    ) -> None:
        """`device` is CPU, GPU, NPU or MYRIAD (optionally `.N`); `inference_precision` is
        the CPU's compute precision ("f32" by default, because CPUs with bf16 support would
        otherwise compute in bf16 and drift from the other runtimes; None keeps the default).

        Raises ValueError for a thread count below one or an unknown device name.
        """
        super().__init__(num_threads=num_threads)
        if not _DEVICE_RE.match(device):
            raise ValueError(f"unknown OpenVINO device {device!r}; expected one of {DEVICES}")
        self.device = device
        self.inference_precision = inference_precision
        self.version = ""
        self._compiled: Any = None
        self._request: Any = None
        self._input: TensorDetails | None = None
        self._outputs: list[TensorDetails] = []
        # positions of the name-sorted outputs among the compiled model's outputs
        self._order: tuple[int, ...] = ()
        self._dynamic_axes: tuple[int, ...] = ()

    @classmethod
    def create(
        cls, *, num_threads: int | None = None, options: RuntimeOptions | None = None
    ) -> OpenVINORuntime:
        """A runtime on the profile's device (CPU when none is named).

        Raises RuntimeUnavailableError for a device OpenVINO has no plugin for.
        """
        device = (options.device if options is not None else None) or "CPU"
        if not _DEVICE_RE.match(device):
            raise RuntimeUnavailableError(f"OpenVINO cannot target device {device}")
        return cls(num_threads=num_threads, device=device)

    @classmethod
    def probe(cls) -> RuntimeProbe:
        try:
            ov = _import_openvino()
            version = str(ov.get_version())
            devices = list(ov.Core().available_devices)
        except RuntimeUnavailableError as exc:
            return RuntimeProbe(key=cls.KEY, available=False, reason=str(exc))
        except Exception as exc:  # the Core constructor raises RuntimeError on a broken install
            return RuntimeProbe(key=cls.KEY, available=False, reason=f"openvino failed: {exc}")
        short = version.split("-", 1)[0]
        if not devices:
            return RuntimeProbe(
                key=cls.KEY, available=False, reason=f"OpenVINO {short} sees no device"
            )
        return RuntimeProbe(
            key=cls.KEY,
            available=True,
            reason=f"OpenVINO {short}; devices {', '.join(devices)}; {myriad_note(version)}",
            # "GPU.0" and "GPU.1" are both the profile's "GPU"
            devices=frozenset(d.split(".", 1)[0] for d in devices),
        )

    def load(self, model_path: Path, *, input_shape: Sequence[int] | None = None) -> None:
        """Load an IR, ONNX or TFLite model; `input_shape` (-1 for a free dimension) replaces
        the input shape the file declares.

        Raises RuntimeUnavailableError (no openvino, or the device is absent) or ModelLoadError.
        """
        ov = _import_openvino()
        path = Path(model_path)
        if path.suffix.lower() not in FORMATS:
            raise ModelLoadError(f"OpenVINO runtime reads {', '.join(FORMATS)} files, not {path}")
        core = ov.Core()
        version = str(ov.get_version())
        self._check_device(list(core.available_devices), version)
        # a failed load leaves any model already loaded in place
        try:
            model = core.read_model(str(path))
            if len(model.inputs) != 1:
                raise ModelLoadError(f"{path} has {len(model.inputs)} inputs; one is supported")
            if input_shape is not None:
                shape = [int(d) for d in input_shape]
                model.reshape({model.inputs[0]: ov.PartialShape(shape)})
            compiled = core.compile_model(model, self.device, self._config())
            request = compiled.create_infer_request()
        except ModelLoadError:
            raise
        except Exception as exc:  # openvino raises RuntimeError (and subclasses) for bad models
            raise ModelLoadError(f"OpenVINO could not load {path}: {exc}") from exc

        port = compiled.inputs[0]
        input_details = TensorDetails(
            name=_port_name(set(port.get_names()), 0),
            shape=_shape(port.get_partial_shape()),
            dtype=_np_type(port.get_element_type()),
        )
        named = [(_port_name(set(o.get_names()), i), i, o) for i, o in enumerate(compiled.outputs)]
        named.sort(key=lambda item: (natural_key(item[0]), item[1]))
        outputs = [
            TensorDetails(
                name=name, shape=_shape(o.get_partial_shape()), dtype=_np_type(o.get_element_type())
            )
            for name, _, o in named
        ]
        self._compiled = compiled
        self._request = request
        self._input = input_details
        self._outputs = outputs
        self._order = tuple(i for _, i, _ in named)
        self._dynamic_axes = tuple(i for i, d in enumerate(input_details.shape) if d < 0)
        self.version = version
        logger.info(
            "runtime_loaded key=%s device=%s version=%s model=%s input=%s outputs=%s",
            self.KEY,
            self.device,
            version,
            path,
            input_details.shape,
            [o.name for o in outputs],
        )

    def _check_device(self, available: list[str], version: str) -> None:
        base = self.device.split(".", 1)[0]
        if self.device in available or (
            "." not in self.device and any(d.split(".", 1)[0] == base for d in available)
        ):
            return
        note = f"; {myriad_note(version)}" if base == "MYRIAD" else ""
        raise RuntimeUnavailableError(
            f"OpenVINO device {self.device} is not available (this host has "
            f"{', '.join(available) or 'none'}){note}"
        )

    def _config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        if self.num_threads is not None and self.device.startswith("CPU"):
            config["INFERENCE_NUM_THREADS"] = self.num_threads
        if self.inference_precision is not None and self.device.startswith("CPU"):
            config["INFERENCE_PRECISION_HINT"] = self.inference_precision
        return config

    def infer(self, tensor: np.ndarray) -> list[np.ndarray]:
        self._expected_input(tensor)
        try:
            # share_inputs skips a copy of the frame tensor; share_outputs=False copies the
            # results out, so they outlive the next call on this reused request
            results = self._request.infer(
                np.ascontiguousarray(tensor), share_inputs=True, share_outputs=False
            ).to_tuple()
        except Exception as exc:  # openvino raises RuntimeError for failed inferences
            raise InferenceError(f"OpenVINO inference failed: {exc}") from exc
        return [results[i] for i in self._order]

    def close(self) -> None:
        self._request = None
        self._compiled = None
        self._input = None
        self._outputs = []
        self._order = ()
        self._dynamic_axes = ()
