"""Turn an installed bundle into a running model: load the chosen variant, warm it up.

Which runtime and variant to load is `agent.selection`'s choice; this module loads it and
reports a failure with its reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from agent.pipeline.workers import ActiveModel
from agent.runtimes.base import Runtime, RuntimeOptions, RuntimePluginError, load_runtime_class
from ota.install import InstalledBundle
from ota.manifest import Variant
from protocol.events import InstallReason

if TYPE_CHECKING:  # numpy, OpenCV and the detectors load with the first model, not the agent
    import numpy as np

log = logging.getLogger(__name__)


class ModelLoadFailed(Exception):
    """No runtime could run the bundle, or the model failed to load or to warm up."""

    def __init__(self, reason: InstallReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class RuntimeChoice:
    """Which runtime runs a bundle, from which variant, and why the others were passed over."""

    variant: Variant
    runtime: str
    passed_over: dict[str, str] = field(default_factory=dict)
    precision: str | None = None
    device: str | None = None
    # the variant's INT8 calibration cache (a path inside the bundle), if it carries one
    calibration: str | None = None

    @property
    def reason(self) -> str:
        skipped = "; ".join(f"{k}: {v}" for k, v in self.passed_over.items())
        target = "".join(f" {part}" for part in (self.precision, self.device) if part)
        return f"{self.runtime}{target} preferred and available" + (
            f" (skipped {skipped})" if skipped else ""
        )


def load_model(
    installed: InstalledBundle,
    choice: RuntimeChoice,
    *,
    threads: int = 2,
    warmup_frame: np.ndarray | None = None,
    cache_dir: Path | None = None,
    runtime_class: type[Runtime] | None = None,
) -> ActiveModel:
    """Load the chosen variant of the bundle and run one warm-up inference; `cache_dir` is where
    a runtime that compiles the model (TensorRT) keeps what it built; `runtime_class` replaces
    the in-process plug-in (a runtime worker's proxy). Raises ModelLoadFailed."""
    import numpy as np

    from agent.detect.detector import Detector
    from agent.detect.preprocess import input_shape

    manifest = installed.manifest
    runtime_class = runtime_class or load_runtime_class(choice.runtime)
    if runtime_class is None:
        raise ModelLoadFailed(
            InstallReason.NO_RUNTIME, f"{choice.runtime} probed but no longer imports"
        )
    options = RuntimeOptions(
        device=choice.device,
        precision=choice.precision,
        cache_dir=cache_dir,
        calibration_cache=installed.path_of(choice.calibration) if choice.calibration else None,
    )
    try:
        runtime = runtime_class.create(num_threads=threads, options=options)
    except RuntimePluginError as exc:
        raise ModelLoadFailed(InstallReason.LOAD_FAILED, f"{choice.runtime}: {exc}") from exc
    try:
        runtime.load(
            installed.path_of(choice.variant.model), input_shape=input_shape(manifest.input)
        )
        detector = Detector(runtime, manifest.input, manifest.postprocess, manifest.labels)
        frame = warmup_frame
        if frame is None:
            frame = np.full((manifest.input.height, manifest.input.width, 3), 114, np.uint8)
        detector.detect(frame)
    except (RuntimePluginError, ValueError, OSError) as exc:
        runtime.close()
        raise ModelLoadFailed(InstallReason.LOAD_FAILED, f"{choice.runtime}: {exc}") from exc
    log.info(
        "event=model_loaded bundle=%s@%d runtime=%s reason=%r",
        manifest.name,
        manifest.version,
        choice.runtime,
        choice.reason,
    )
    return ActiveModel(
        detector=detector,
        name=manifest.name,
        version=manifest.version,
        digest=installed.digest,
        runtime=choice.runtime,
        reason=choice.reason,
        close=runtime.close,
    )
