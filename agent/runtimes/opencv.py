"""OpenCV's DNN module on the CPU: ONNX models, and TFLite models where the build has the importer.

Outputs are returned sorted by output layer name (digit runs compared as numbers), the rule
every runtime plugin follows. OpenCV takes image tensors as NCHW; a TFLite model declares NHWC,
so its input is reported as NHWC (what the bundle's input spec describes) and transposed into a
buffer kept for the purpose on each frame.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agent.runtimes._shared import ModelFormatError, graph_inputs, natural_key
from agent.runtimes.base import (
    InferenceError,
    ModelLoadError,
    Runtime,
    RuntimeProbe,
    RuntimeUnavailableError,
    TensorDetails,
)
from protocol.events import RuntimeKey

logger = logging.getLogger(__name__)

FORMATS = (".onnx", ".tflite")
# what OpenCV says when it was built without FlatBuffers, hence without the TFLite importer
_NO_TFLITE = "FlatBuffers"


def _import_cv2() -> Any:
    try:
        cv2 = importlib.import_module("cv2")
    except ImportError as exc:
        raise RuntimeUnavailableError(f"opencv is not installed ({exc})") from exc
    if not hasattr(cv2, "dnn"):
        raise RuntimeUnavailableError(f"OpenCV {cv2.__version__} was built without the dnn module")
    return cv2


def tflite_supported(cv2: Any) -> bool:
    """Whether this OpenCV build can read TFLite models: it is asked to read an empty one."""
    reader = getattr(cv2.dnn, "readNetFromTFLite", None)
    if reader is None:
        return False
    try:
        reader(np.zeros(0, dtype=np.uint8))
    except cv2.error as exc:
        return _NO_TFLITE not in str(exc)
    return True


class OpenCVRuntime(Runtime):
    """A `cv2.dnn` network on the CPU."""

    KEY = RuntimeKey.OPENCV

    def __init__(self, *, num_threads: int | None = None) -> None:
        super().__init__(num_threads=num_threads)
        self._net: Any = None
        self._input: TensorDetails | None = None
        self._outputs: list[TensorDetails] = []
        self._output_names: list[str] = []
        self._dynamic_axes: tuple[int, ...] = ()
        # NCHW buffer an NHWC input is transposed into; None when the model takes NCHW itself
        self._nchw: np.ndarray | None = None
        self._nhwc_input = False

    @classmethod
    def probe(cls) -> RuntimeProbe:
        try:
            cv2 = _import_cv2()
        except RuntimeUnavailableError as exc:
            return RuntimeProbe(key=cls.KEY, available=False, reason=str(exc))
        formats = "ONNX and TFLite" if tflite_supported(cv2) else "ONNX only (no TFLite importer)"
        return RuntimeProbe(
            key=cls.KEY, available=True, reason=f"OpenCV {cv2.__version__} dnn on CPU; {formats}"
        )

    def load(self, model_path: Path, *, input_shape: Sequence[int] | None = None) -> None:
        """Load an .onnx or .tflite model. `input_shape` (-1 for a free dimension) overrides
        the shape an ONNX file declares and gives a TFLite model's, which is otherwise unknown.

        Raises RuntimeUnavailableError or ModelLoadError.
        """
        cv2 = _import_cv2()
        path = Path(model_path)
        suffix = path.suffix.lower()
        if suffix not in FORMATS:
            raise ModelLoadError(f"OpenCV runtime reads {', '.join(FORMATS)} files, not {path}")
        # a failed load leaves any model already loaded in place
        try:
            if suffix == ".onnx":
                declared = graph_inputs(path.read_bytes())
                if len(declared) != 1:
                    raise ModelLoadError(f"{path} has {len(declared)} inputs; one is supported")
                name, file_shape = declared[0]
                net = cv2.dnn.readNetFromONNX(str(path))
            else:
                if not tflite_supported(cv2):
                    raise RuntimeUnavailableError(
                        f"OpenCV {cv2.__version__} was built without the TFLite importer"
                    )
                name, file_shape = "input", None
                # OpenCV 5's new engine reports only one of a TFLite model's outputs
                # (BlazeFace loses `classificators`); the classic engine reports them all
                net = cv2.dnn.readNetFromTFLite(str(path), engine=cv2.dnn.ENGINE_CLASSIC)
                # the new engine runs on the CPU only and warns when given a target
                net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
            net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        except (OSError, ModelFormatError, cv2.error) as exc:
            raise ModelLoadError(f"OpenCV could not load {path}: {exc}") from exc

        if input_shape is not None:
            shape = tuple(int(d) for d in input_shape)
        elif file_shape is not None:
            shape = file_shape
        else:
            shape = (-1, -1, -1, -1)
        nhwc = suffix == ".tflite"
        if nhwc and len(shape) != 4:
            raise ModelLoadError(f"a TFLite image model takes an NHWC input, not {shape}")
        if self.num_threads is not None:
            # process-wide in OpenCV: it also caps the threads cv2.resize and friends use
            cv2.setNumThreads(self.num_threads)
        output_names = sorted(net.getUnconnectedOutLayersNames(), key=natural_key)
        input_details = TensorDetails(name=name, shape=shape, dtype=np.dtype(np.float32))
        dynamic = tuple(i for i, d in enumerate(shape) if d < 0)
        nchw = None
        output_shapes: list[tuple[int, ...]] = [() for _ in output_names]
        if not dynamic:
            nchw = np.empty(_to_nchw_shape(shape), dtype=np.float32) if nhwc else None
            # one run at load learns the output shapes and takes the first-frame setup cost
            try:
                net.setInput(np.zeros(_to_nchw_shape(shape) if nhwc else shape, np.float32))
                output_shapes = [tuple(o.shape) for o in net.forward(output_names)]
            except cv2.error as exc:
                raise ModelLoadError(f"OpenCV could not run {path} on {shape}: {exc}") from exc

        self._net = net
        self._input = input_details
        self._output_names = output_names
        self._outputs = [
            TensorDetails(name=n, shape=s, dtype=np.dtype(np.float32))
            for n, s in zip(output_names, output_shapes, strict=True)
        ]
        self._dynamic_axes = dynamic
        self._nhwc_input = nhwc
        self._nchw = nchw
        logger.info(
            "runtime_loaded key=%s source=%r model=%s input=%s outputs=%s",
            self.KEY,
            f"OpenCV {cv2.__version__}",
            path,
            shape,
            output_names,
        )

    def infer(self, tensor: np.ndarray) -> list[np.ndarray]:
        self._expected_input(tensor)
        blob = tensor
        if self._nhwc_input:
            if self._nchw is None:
                blob = np.ascontiguousarray(tensor.transpose(0, 3, 1, 2))
            else:
                np.copyto(self._nchw, tensor.transpose(0, 3, 1, 2))
                blob = self._nchw
        net = self._net
        try:
            net.setInput(blob)
            # forward() hands back arrays of their own, so outputs outlive the next call
            return list(net.forward(self._output_names))
        except Exception as exc:  # cv2.error, which is not importable at module level here
            raise InferenceError(f"OpenCV inference failed: {exc}") from exc

    def close(self) -> None:
        self._net = None
        self._input = None
        self._outputs = []
        self._output_names = []
        self._dynamic_axes = ()
        self._nchw = None
        self._nhwc_input = False


def _to_nchw_shape(nhwc: tuple[int, ...]) -> tuple[int, ...]:
    return (nhwc[0], nhwc[3], nhwc[1], nhwc[2])
