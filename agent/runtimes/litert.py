"""LiteRT (TensorFlow Lite) on the CPU: `ai-edge-litert`, else the frozen `tflite-runtime`.

Outputs are returned sorted by output tensor name (digit runs compared as numbers, so
`Identity_2` comes before `Identity_10`), ties broken by tensor index. Names survive model
conversion far better than tensor indices do, and the same rule works for every runtime that
names its outputs, so a decoder sees one order whichever runtime ran the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.runtimes._shared import TFLiteRuntime, import_interpreter
from agent.runtimes.base import ModelLoadError, RuntimeProbe, RuntimeUnavailableError
from protocol.events import RuntimeKey


class LiteRTRuntime(TFLiteRuntime):
    """A LiteRT interpreter on the CPU (XNNPACK where the build has it)."""

    KEY = RuntimeKey.LITERT

    @classmethod
    def probe(cls) -> RuntimeProbe:
        try:
            _, source = import_interpreter()
        except RuntimeUnavailableError as exc:
            return RuntimeProbe(key=cls.KEY, available=False, reason=str(exc))
        return RuntimeProbe(key=cls.KEY, available=True, reason=f"{source} on CPU")

    def _open_interpreter(self, model_path: Path) -> tuple[Any, str]:
        """A new interpreter on the model, and where it came from.

        Raises RuntimeUnavailableError or ModelLoadError.
        """
        interpreter_class, source = import_interpreter()
        try:
            interpreter = interpreter_class(
                model_path=str(model_path), num_threads=self.num_threads
            )
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelLoadError(f"LiteRT could not load {model_path}: {exc}") from exc
        return interpreter, source
