"""Which device profile this is, which runtimes to probe, and which runtime runs a bundle.

The runtime choice is the device's preference order ∩ runtimes that really load here ∩
variants the bundle carries; every runtime passed over is reported with the reason. Choosing
is pure: probing happens once at start, loading is `agent.deploy.loader`'s job.

Probes run in short-lived processes (vendor libraries a probe imports do not stay in the agent),
and a runtime the device profile puts in a worker is probed under the worker's interpreter;
`RuntimeHosts` hands the loader the worker proxy class for those runtimes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from agent.deploy.loader import ModelLoadFailed, RuntimeChoice
from agent.runtimes.base import Runtime, RuntimeProbe
from agent.runtimes.probing import probe_in_subprocess
from agent.runtimes.worker.launch import WorkerEvents, WorkerLaunch, probe_in_worker
from device_profiles.errors import ProfileError
from device_profiles.probe import detect as detect_profile
from device_profiles.probe import effective_runtimes, effective_workers
from device_profiles.schema import RuntimePreference, RuntimeWorker
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


class RuntimeHosts:
    """Which runtimes run in a worker process on this device, and the Runtime class for each."""

    def __init__(
        self, launches: Mapping[str, WorkerLaunch], events: WorkerEvents | None = None
    ) -> None:
        self.launches = dict(launches)
        self._events = events
        self._classes: dict[str, type[Runtime]] = {}

    @classmethod
    def from_profile(
        cls, workers: Mapping[str, RuntimeWorker], events: WorkerEvents | None = None
    ) -> RuntimeHosts:
        """Workers as a profile describes them; one whose interpreter this device lacks is left
        out (logged), and its runtime is probed and run in-process instead."""
        launches = {}
        for key, spec in workers.items():
            if not Path(spec.python).is_file():
                log.warning(
                    "event=worker_python_missing runtime=%s python=%s fallback=in-process",
                    key,
                    spec.python,
                )
                continue
            launches[str(key)] = WorkerLaunch(
                python=spec.python, python_path=tuple(spec.python_path), env=dict(spec.env)
            )
        return cls(launches, events)

    def runtime_class(self, key: str) -> type[Runtime] | None:
        """The worker proxy class for `key`, or None when it runs in-process."""
        launch = self.launches.get(key)
        if launch is None:
            return None
        if key not in self._classes:
            # numpy comes with the proxy: imported only when a model is loaded
            from agent.runtimes.worker.proxy import worker_runtime_class

            self._classes[key] = worker_runtime_class(key, launch, self._events)
        return self._classes[key]


def probe_runtimes(hosts: RuntimeHosts | None = None) -> list[RuntimeProbe]:
    """Whether each runtime loads here, and why (not), probed in short-lived processes: the
    in-process runtimes in one child of this interpreter, each worker runtime under its own
    interpreter. A probe never raises."""
    launches = hosts.launches if hosts is not None else {}
    local = [key for key in PROBED_RUNTIMES if key not in launches]
    found = {p.key: p for p in probe_in_subprocess([str(k) for k in local])}
    for key, launch in launches.items():
        found[key] = probe_in_worker(key, launch)
    return [found[str(key)] for key in PROBED_RUNTIMES if str(key) in found]


@dataclass(frozen=True)
class DeviceChoice:
    """The device profile, its runtime preferences best first, and its runtime workers."""

    profile: str
    preferences: tuple[str | RuntimePreference, ...]
    workers: Mapping[str, RuntimeWorker] = field(default_factory=dict)


def choose_device(forced: str | None) -> DeviceChoice:
    """The device profile, its runtime preferences (runtime, precision, device) and workers.

    Raises ProfileError when a `forced` profile does not exist; an undetected one falls back to
    `DEFAULT_PREFERENCES` with every runtime in-process."""
    try:
        detection = detect_profile(forced=forced)
    except ProfileError as exc:
        if forced:
            raise
        log.warning(
            "event=no_profile reason=%r fallback=%s", str(exc), ",".join(DEFAULT_PREFERENCES)
        )
        return DeviceChoice("unknown", DEFAULT_PREFERENCES)
    order = tuple(effective_runtimes(detection))
    workers = effective_workers(detection)
    log.info(
        "event=profile_detected profile=%s accelerators=%s runtimes=%s workers=%s",
        detection.profile.name,
        ",".join(a.name for a in detection.accelerators_found) or "-",
        ",".join(describe_preference(p) for p in order),
        ",".join(f"{k}:{w.python}" for k, w in workers.items()) or "-",
    )
    return DeviceChoice(detection.profile.name, order, workers)


def choose_profile(forced: str | None) -> tuple[str, tuple[str | RuntimePreference, ...]]:
    """The device profile and its runtime preferences, best first (see `choose_device`).

    Raises ProfileError when a `forced` profile does not exist."""
    device = choose_device(forced)
    return device.profile, device.preferences


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
