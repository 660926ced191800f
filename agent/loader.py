"""Turn an installed bundle into a running model: choose the runtime, load, warm up.

The choice is the device's preference order ∩ runtimes that really load here ∩ variants the
bundle carries; every runtime passed over is reported with the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from agent.detect.detector import Detector
from agent.pipeline import ActiveModel
from agent.runtimes.base import RuntimePluginError, RuntimeProbe, load_runtime_class
from ota.install import InstalledBundle
from ota.manifest import Manifest, Variant

log = logging.getLogger(__name__)

# used when no device profile says otherwise: fastest first for a plain CPU host
DEFAULT_PREFERENCES: tuple[str, ...] = ("openvino", "onnx", "litert", "opencv")


class ModelLoadFailed(Exception):
    """No runtime could run the bundle, or the model failed to load or to warm up."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class RuntimeChoice:
    variant: Variant
    runtime: str
    passed_over: dict[str, str] = field(default_factory=dict)

    @property
    def reason(self) -> str:
        skipped = "; ".join(f"{k}: {v}" for k, v in self.passed_over.items())
        return f"{self.runtime} preferred and available" + (
            f" (skipped {skipped})" if skipped else ""
        )


def choose_runtime(
    manifest: Manifest, probes: Sequence[RuntimeProbe], preferences: Sequence[str]
) -> RuntimeChoice:
    """Pick the first preferred runtime that loads here and that the bundle has a variant for.

    Raises ModelLoadFailed("no_runtime", ...) naming why each candidate was passed over.
    """
    available = {p.key: p for p in probes}
    passed: dict[str, str] = {}
    for key in preferences:
        probe = available.get(key)
        variant = manifest.variant_for(key)
        if probe is None or not probe.available:
            passed[key] = probe.reason if probe else "not probed"
        elif variant is None:
            passed[key] = "bundle has no variant for it"
        else:
            return RuntimeChoice(variant=variant, runtime=key, passed_over=passed)
    carried = ", ".join(v.runtime for v in manifest.variants)
    raise ModelLoadFailed(
        "no_runtime",
        f"bundle carries {carried}; none is usable here ("
        + "; ".join(f"{k}: {v}" for k, v in passed.items())
        + ")",
    )


def load_model(
    installed: InstalledBundle,
    probes: Sequence[RuntimeProbe],
    preferences: Sequence[str] = DEFAULT_PREFERENCES,
    *,
    threads: int = 2,
    warmup_frame: np.ndarray | None = None,
) -> ActiveModel:
    """Load the bundle's best variant and run one warm-up inference. Raises ModelLoadFailed."""
    manifest = installed.manifest
    choice = choose_runtime(manifest, probes, preferences)
    runtime_class = load_runtime_class(choice.runtime)
    if runtime_class is None:
        raise ModelLoadFailed("no_runtime", f"{choice.runtime} probed but no longer imports")
    runtime = runtime_class(num_threads=threads)
    try:
        runtime.load(installed.path_of(choice.variant.model))
        detector = Detector(runtime, manifest.input, manifest.postprocess, manifest.labels)
        frame = warmup_frame
        if frame is None:
            frame = np.full((manifest.input.height, manifest.input.width, 3), 114, np.uint8)
        detector.detect(frame)
    except (RuntimePluginError, ValueError, OSError) as exc:
        runtime.close()
        raise ModelLoadFailed("load_failed", f"{choice.runtime}: {exc}") from exc
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
