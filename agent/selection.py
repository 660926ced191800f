"""Which device profile this is, which runtimes to probe, and which runtime runs a bundle.

The runtime choice is the device's preference order ∩ runtimes that really load here ∩
variants the bundle carries; every runtime passed over is reported with the reason. Choosing
is pure: probing happens once at start, loading is `agent.deploy.loader`'s job.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from agent.deploy.loader import ModelLoadFailed, RuntimeChoice
from agent.runtimes.base import RuntimeProbe, probe_runtime
from device_profiles.errors import ProfileError
from device_profiles.probe import detect as detect_profile
from device_profiles.probe import effective_runtimes
from device_profiles.schema import RuntimePreference
from ota.manifest import Manifest, Variant
from protocol.events import InstallReason, RuntimeKey

log = logging.getLogger(__name__)

# every runtime the agent has a plug-in for, probed at start in this order
PROBED_RUNTIMES: tuple[RuntimeKey, ...] = tuple(RuntimeKey)

# used when no device profile says otherwise: fastest first for a plain CPU host
DEFAULT_PREFERENCES: tuple[RuntimeKey, ...] = (
    RuntimeKey.OPENVINO,
    RuntimeKey.ONNX,
    RuntimeKey.LITERT,
    RuntimeKey.OPENCV,
)

# variants each runtime can start from, best first: TensorRT builds its engine on the device
# from a `tensorrt` variant (ONNX plus calibration cache) or else from the plain ONNX one
VARIANT_SOURCES: dict[str, tuple[str, ...]] = {
    RuntimeKey.TENSORRT: (RuntimeKey.TENSORRT, RuntimeKey.ONNX)
}
# runtimes whose precision is what they build, not what the variant file holds
BUILDS_PRECISION = frozenset({RuntimeKey.TENSORRT})
# suffixes of an INT8 calibration cache file carried in a variant
CALIBRATION_SUFFIXES = (".calib", ".cache")


def probe_runtimes() -> list[RuntimeProbe]:
    """Whether each runtime loads here, and why (not); a probe never raises."""
    return [probe_runtime(key) for key in PROBED_RUNTIMES]


def choose_profile(forced: str | None) -> tuple[str, tuple[str | RuntimePreference, ...]]:
    """The device profile and its runtime preferences (runtime, precision, device), best first.

    Raises ProfileError when a `forced` profile does not exist; an undetected one falls back to
    `DEFAULT_PREFERENCES`."""
    try:
        detection = detect_profile(forced=forced)
    except ProfileError as exc:
        if forced:
            raise
        log.warning(
            "event=no_profile reason=%r fallback=%s", str(exc), ",".join(DEFAULT_PREFERENCES)
        )
        return "unknown", DEFAULT_PREFERENCES
    order = tuple(effective_runtimes(detection))
    log.info(
        "event=profile_detected profile=%s accelerators=%s runtimes=%s",
        detection.profile.name,
        ",".join(a.name for a in detection.accelerators_found) or "-",
        ",".join(describe_preference(p) for p in order),
    )
    return detection.profile.name, order


def describe_preference(preference: str | RuntimePreference) -> str:
    """`runtime[/device][:precision]` for logs and `edgefleet-agent probe`."""
    if isinstance(preference, str):
        return str(preference)
    device = f"/{preference.device}" if preference.device else ""
    return f"{preference.runtime}{device}:{preference.precision}"


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

    Raises ModelLoadFailed(InstallReason.NO_RUNTIME, ...) naming why each candidate was passed
    over.
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
            calibration=calibration_file(variant),
        )
    carried = ", ".join(f"{v.runtime} {v.precision}" for v in manifest.variants)
    raise ModelLoadFailed(
        InstallReason.NO_RUNTIME,
        f"bundle carries {carried}; none is usable here ("
        + "; ".join(f"{k}: {v}" for k, v in passed.items())
        + ")",
    )
