"""Turn an installed bundle into a running model: choose the runtime, load, warm up.

The choice is the device's preference order ∩ runtimes that really load here ∩ variants the
bundle carries; every runtime passed over is reported with the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from agent.detect.detector import Detector
from agent.detect.preprocess import input_shape
from agent.pipeline.workers import ActiveModel
from agent.runtimes.base import (
    RuntimeOptions,
    RuntimePluginError,
    RuntimeProbe,
    load_runtime_class,
)
from ota.install import InstalledBundle
from ota.manifest import Manifest, Variant

log = logging.getLogger(__name__)

# used when no device profile says otherwise: fastest first for a plain CPU host
DEFAULT_PREFERENCES: tuple[str, ...] = ("openvino", "onnx", "litert", "opencv")

# variants each runtime can start from, best first: TensorRT builds its engine on the device
# from a `tensorrt` variant (ONNX plus calibration cache) or else from the plain ONNX one
VARIANT_SOURCES: dict[str, tuple[str, ...]] = {"tensorrt": ("tensorrt", "onnx")}
# runtimes whose precision is what they build, not what the variant file holds
BUILDS_PRECISION = frozenset({"tensorrt"})
# suffixes of an INT8 calibration cache file carried in a variant
CALIBRATION_SUFFIXES = (".calib", ".cache")


class ModelLoadFailed(Exception):
    """No runtime could run the bundle, or the model failed to load or to warm up."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class _ProfilePreference(Protocol):
    @property
    def runtime(self) -> str: ...
    @property
    def precision(self) -> str: ...
    @property
    def device(self) -> str | None: ...


@dataclass(frozen=True)
class Preference:
    """One entry of a device's runtime order: a runtime, optionally a precision and a device."""

    runtime: str
    precision: str | None = None
    device: str | None = None

    @property
    def label(self) -> str:
        return f"{self.runtime}/{self.device}" if self.device else self.runtime

    @classmethod
    def of(cls, entry: str | _ProfilePreference) -> Preference:
        """A runtime key or a device profile's RuntimePreference as a Preference."""
        if isinstance(entry, str):
            return cls(entry)
        return cls(entry.runtime, entry.precision, entry.device)


@dataclass(frozen=True)
class RuntimeChoice:
    variant: Variant
    runtime: str
    passed_over: dict[str, str] = field(default_factory=dict)
    precision: str | None = None
    device: str | None = None

    @property
    def reason(self) -> str:
        skipped = "; ".join(f"{k}: {v}" for k, v in self.passed_over.items())
        target = "".join(f" {part}" for part in (self.precision, self.device) if part)
        return f"{self.runtime}{target} preferred and available" + (
            f" (skipped {skipped})" if skipped else ""
        )


def calibration_file(variant: Variant) -> str | None:
    """The path of the variant's INT8 calibration cache, if it carries one."""
    for entry in variant.files:
        if entry.path != variant.model and entry.path.endswith(CALIBRATION_SUFFIXES):
            return entry.path
    return None


def _pick_variant(manifest: Manifest, pref: Preference) -> tuple[Variant | None, str]:
    """The bundle's variant for this preference, or None and why not."""
    sources = VARIANT_SOURCES.get(pref.runtime, (pref.runtime,))
    candidates = [v for source in sources for v in manifest.variants if v.runtime == source]
    if not candidates:
        return None, f"bundle has no {' or '.join(sources)} variant"
    if pref.runtime in BUILDS_PRECISION:
        if pref.precision != "int8":
            return candidates[0], ""
        calibrated = [v for v in candidates if calibration_file(v) is not None]
        if not calibrated:
            return None, "INT8 needs a calibration cache in the bundle and none is carried"
        return calibrated[0], ""
    # a variant of the preferred precision first; another precision still runs correctly
    exact = [v for v in candidates if v.precision == pref.precision]
    return (exact or candidates)[0], ""


def choose_runtime(
    manifest: Manifest,
    probes: Sequence[RuntimeProbe],
    preferences: Sequence[str | _ProfilePreference],
) -> RuntimeChoice:
    """Pick the first preferred runtime (and device) that works here and that the bundle has a
    variant for; `preferences` are runtime keys or a device profile's RuntimePreferences.

    Raises ModelLoadFailed("no_runtime", ...) naming why each candidate was passed over.
    """
    available = {p.key: p for p in probes}
    passed: dict[str, str] = {}
    for pref in (Preference.of(entry) for entry in preferences):
        probe = available.get(pref.runtime)
        if probe is None or not probe.available:
            passed.setdefault(pref.label, probe.reason if probe else "not probed")
            continue
        if pref.device and probe.devices and pref.device not in probe.devices:
            offered = ", ".join(sorted(probe.devices))
            passed.setdefault(
                pref.label, f"no {pref.device} here ({probe.reason}; offers {offered})"
            )
            continue
        variant, why_not = _pick_variant(manifest, pref)
        if variant is None:
            passed.setdefault(pref.label, why_not)
            continue
        precision = pref.precision if pref.runtime in BUILDS_PRECISION else variant.precision
        return RuntimeChoice(
            variant=variant,
            runtime=pref.runtime,
            passed_over=passed,
            precision=precision,
            device=pref.device,
        )
    carried = ", ".join(f"{v.runtime} {v.precision}" for v in manifest.variants)
    raise ModelLoadFailed(
        "no_runtime",
        f"bundle carries {carried}; none is usable here ("
        + "; ".join(f"{k}: {v}" for k, v in passed.items())
        + ")",
    )


def load_model(
    installed: InstalledBundle,
    probes: Sequence[RuntimeProbe],
    preferences: Sequence[str | _ProfilePreference] = DEFAULT_PREFERENCES,
    *,
    threads: int = 2,
    warmup_frame: np.ndarray | None = None,
    cache_dir: Path | None = None,
) -> ActiveModel:
    """Load the bundle's best variant and run one warm-up inference; `cache_dir` is where a
    runtime that compiles the model (TensorRT) keeps what it built. Raises ModelLoadFailed."""
    manifest = installed.manifest
    choice = choose_runtime(manifest, probes, preferences)
    runtime_class = load_runtime_class(choice.runtime)
    if runtime_class is None:
        raise ModelLoadFailed("no_runtime", f"{choice.runtime} probed but no longer imports")
    calibration = calibration_file(choice.variant)
    options = RuntimeOptions(
        device=choice.device,
        precision=choice.precision,
        cache_dir=cache_dir,
        calibration_cache=installed.path_of(calibration) if calibration else None,
    )
    try:
        runtime = runtime_class.create(num_threads=threads, options=options)
    except RuntimePluginError as exc:
        raise ModelLoadFailed("load_failed", f"{choice.runtime}: {exc}") from exc
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
