"""Probe the hardware under a filesystem root and pick the device profile that fits it.

Probing reads files only under the given root, so tests build fixture trees in a temporary folder.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from device_profiles.errors import NoProfileMatchedError, UnknownProfileError
from device_profiles.loader import load_profiles
from device_profiles.schema import Accelerator, DeviceProfile, RuntimePreference, RuntimeWorker

DEVICE_TREE_MODEL_PATHS = ("proc/device-tree/model", "sys/firmware/devicetree/base/model")
USB_DEVICES_DIR = "sys/bus/usb/devices"
NVIDIA_DRIVER_VERSION = "proc/driver/nvidia/version"
CPU_DEVICE = "CPU"

_ARCH_ALIASES = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64", "armv7": "armv7l"}


@dataclass(frozen=True)
class HardwareFacts:
    """What the probe saw; paths are relative to the probed root."""

    arch: str
    device_tree_model: str | None = None
    present_paths: frozenset[str] = frozenset()
    usb_ids: frozenset[str] = frozenset()
    nvidia_driver_version: str | None = None

    @property
    def nvidia_driver(self) -> bool:
        return self.nvidia_driver_version is not None


@dataclass(frozen=True)
class ProfileMatch:
    """The chosen profile, the add-on accelerators found, and why."""

    profile: DeviceProfile
    accelerators_found: tuple[Accelerator, ...] = ()
    accelerator_profiles: tuple[DeviceProfile, ...] = ()
    reasons: tuple[str, ...] = field(default_factory=tuple)


def normalise_arch(machine: str) -> str:
    """The kernel's machine name in the spelling profiles use (x86_64, aarch64, armv7l)."""
    machine = machine.strip().lower()
    return _ARCH_ALIASES.get(machine, machine)


def watched_paths(profiles: Iterable[DeviceProfile]) -> frozenset[str]:
    """Every file and device node that some profile's match rule asks about."""
    paths: set[str] = set()
    for profile in profiles:
        paths.update(profile.match.files_exist)
        paths.update(profile.match.device_nodes)
    return frozenset(paths)


def _read_device_tree_model(root: Path) -> str | None:
    for rel in DEVICE_TREE_MODEL_PATHS:
        try:
            raw = (root / rel).read_bytes()
        except OSError:
            continue
        # The kernel exposes the model NUL-terminated.
        model = raw.replace(b"\x00", b"").decode("utf-8", errors="replace").strip()
        if model:
            return model
    return None


def _read_usb_ids(root: Path) -> frozenset[str]:
    ids: set[str] = set()
    devices = root / USB_DEVICES_DIR
    if not devices.is_dir():
        return frozenset()
    for device in devices.iterdir():
        try:
            vendor = (device / "idVendor").read_text(encoding="ascii").strip().lower()
            product = (device / "idProduct").read_text(encoding="ascii").strip().lower()
        except (OSError, UnicodeDecodeError):
            continue  # hubs' interfaces and ports have no ids
        if vendor and product:
            ids.add(f"{vendor}:{product}")
    return frozenset(ids)


def _read_nvidia_driver(root: Path) -> str | None:
    try:
        text = (root / NVIDIA_DRIVER_VERSION).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    first_line = text.strip().splitlines()[0] if text.strip() else ""
    return first_line or "unknown version"


def probe_hardware(
    root: Path = Path("/"),
    arch: str | None = None,
    paths: Iterable[str] | None = None,
) -> HardwareFacts:
    """Gather facts under root; paths to test default to those the shipped profiles name.

    Raises ProfileFileError only when paths is None and a shipped profile is broken.
    """
    root = Path(root)
    wanted = watched_paths(load_profiles().values()) if paths is None else frozenset(paths)
    return HardwareFacts(
        arch=normalise_arch(arch if arch is not None else platform.machine()),
        device_tree_model=_read_device_tree_model(root),
        present_paths=frozenset(p for p in wanted if (root / p).exists()),
        usb_ids=_read_usb_ids(root),
        nvidia_driver_version=_read_nvidia_driver(root),
    )


def match_profile(profile: DeviceProfile, facts: HardwareFacts) -> tuple[bool, list[str]]:
    """Whether every criterion of the profile holds, with one reason per criterion."""
    rule = profile.match
    ok = True
    reasons: list[str] = []

    def check(passed: bool, reason: str) -> None:
        nonlocal ok
        ok = ok and passed
        reasons.append(reason)

    if rule.device_tree_model_contains:
        model = facts.device_tree_model
        hit = next((s for s in rule.device_tree_model_contains if model and s in model), None)
        if hit is not None:
            check(True, f"device-tree model {model!r} contains {hit!r}")
        elif model is None:
            check(False, "no device-tree model")
        else:
            wanted = ", ".join(repr(s) for s in rule.device_tree_model_contains)
            check(False, f"device-tree model {model!r} contains none of {wanted}")
    for rel in rule.files_exist:
        present = rel in facts.present_paths
        check(present, f"{rel} {'exists' if present else 'is missing'}")
    if rule.usb_ids:
        attached = sorted(set(rule.usb_ids) & facts.usb_ids)
        if attached:
            check(True, f"USB device {', '.join(attached)} attached")
        else:
            check(False, f"no USB device {' or '.join(rule.usb_ids)}")
    for rel in rule.device_nodes:
        present = rel in facts.present_paths
        check(present, f"device node {rel} {'present' if present else 'absent'}")
    if rule.arch:
        fits = facts.arch in rule.arch
        check(fits, f"arch {facts.arch} {'is' if fits else 'is not'} {' or '.join(rule.arch)}")
    if rule.nvidia_driver is not None:
        have = facts.nvidia_driver
        if have:
            detail = f"NVIDIA driver loaded ({facts.nvidia_driver_version})"
        else:
            detail = "no NVIDIA driver"
        check(have == rule.nvidia_driver, detail)
    return ok, reasons


def _by_specificity(profiles: Iterable[DeviceProfile]) -> list[DeviceProfile]:
    # Highest priority first; the name breaks ties so the choice never depends on file order.
    return sorted(profiles, key=lambda p: (-p.priority, p.name))


def detect_profile(
    facts: HardwareFacts,
    profiles: Mapping[str, DeviceProfile],
    forced: str | None = None,
) -> ProfileMatch:
    """The most specific matching host profile plus attached USB accelerators.

    Raises UnknownProfileError for a forced name no profile has, NoProfileMatchedError when
    nothing matches and nothing was forced.
    """
    reasons: list[str] = []
    host_matches: list[DeviceProfile] = []
    addon_matches: list[DeviceProfile] = []
    for profile in _by_specificity(profiles.values()):
        matched, why = match_profile(profile, facts)
        verdict = "matches" if matched else "does not match"
        reasons.append(f"{profile.name} {verdict} (priority {profile.priority}): {'; '.join(why)}")
        if matched:
            (addon_matches if profile.usb_accelerator else host_matches).append(profile)

    if forced is not None:
        if forced not in profiles:
            raise UnknownProfileError(forced, sorted(profiles))
        chosen = profiles[forced]
        reasons.append(f"profile {forced} forced by configuration; detection overridden")
    elif host_matches:
        chosen = host_matches[0]
        outranked = [p.name for p in host_matches[1:]]
        tail = f", over {', '.join(outranked)}" if outranked else ""
        reasons.append(
            f"chose {chosen.name}: most specific matching profile"
            f" (priority {chosen.priority}{tail})"
        )
    elif addon_matches:
        chosen = addon_matches[0]
        reasons.append(f"chose {chosen.name}: no host profile matches, only the USB accelerator")
    else:
        raise NoProfileMatchedError(
            f"no device profile matches arch={facts.arch} "
            f"model={facts.device_tree_model!r}:\n" + "\n".join(reasons)
        )

    addons = tuple(p for p in addon_matches if p.name != chosen.name)
    found: list[Accelerator] = []
    for addon in addons:
        for acc in addon.accelerators:
            if acc.usb_id is None or acc.usb_id in facts.usb_ids:
                found.append(acc)
        reasons.append(f"{addon.name} attached: its accelerator runtimes go before {chosen.name}'s")
    return ProfileMatch(
        profile=chosen,
        accelerators_found=tuple(found),
        accelerator_profiles=addons,
        reasons=tuple(reasons),
    )


def effective_runtimes(detection: ProfileMatch) -> list[RuntimePreference]:
    """Runtime preferences in order: add-on accelerators, the host's list, add-on CPU fallbacks.

    A host's own CPU choices outrank an add-on's, so a Jetson with a Coral stick still prefers
    TensorRT over the stick's CPU fallback.
    """
    ordered: list[RuntimePreference] = []
    seen: set[tuple[str, str, str | None]] = set()

    def add(prefs: Iterable[RuntimePreference]) -> None:
        for pref in prefs:
            key = (pref.runtime, pref.precision, pref.device)
            if key not in seen:
                seen.add(key)
                ordered.append(pref)

    for addon in detection.accelerator_profiles:
        add(p for p in addon.runtimes if p.device != CPU_DEVICE)
    add(detection.profile.runtimes)
    for addon in detection.accelerator_profiles:
        add(p for p in addon.runtimes if p.device == CPU_DEVICE)
    return ordered


def effective_workers(detection: ProfileMatch) -> dict[str, RuntimeWorker]:
    """Runtimes that run in a worker process, and how: the host profile's, then those of the
    add-on accelerators found (an NCS2's OpenVINO environment) for runtimes the host leaves."""
    workers = {str(key): worker for key, worker in detection.profile.workers.items()}
    for addon in detection.accelerator_profiles:
        for key, worker in addon.workers.items():
            workers.setdefault(str(key), worker)
    return workers


def detect(
    root: Path = Path("/"),
    arch: str | None = None,
    forced: str | None = None,
    directory: Path | None = None,
) -> ProfileMatch:
    """Load profiles, probe root and detect in one call.

    Raises as load_profiles and detect_profile do.
    """
    profiles = load_profiles(directory)
    facts = probe_hardware(root, arch, paths=watched_paths(profiles.values()))
    return detect_profile(facts, profiles, forced)
