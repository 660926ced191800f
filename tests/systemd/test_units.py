"""The shipped units as systemd itself judges them: exposure scores and a clean `verify`.

`systemd-analyze security --offline=true` rates a unit file without a running manager;
`systemd-analyze verify --root=` loads the real unit files from a scratch root that holds the
host's own units (for the targets they name) and a stub at every Exec*= path, so only the
binaries are stand-ins, never the unit content.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "systemd"
AGENT = UNITS / "edgefleet-agent.service"
CONTROLLER = UNITS / "edgefleet-controller.service"
MOSQUITTO_DROP_IN = UNITS / "mosquitto.service.d" / "edgefleet.conf"
# Debian's own unit, which the drop-in extends (the mosquitto package installs it)
HOST_UNITS = Path("/lib/systemd/system")
MOSQUITTO_UNIT = HOST_UNITS / "mosquitto.service"
EXPOSURE = re.compile(r"Overall exposure level for (\S+): (\d+\.\d+)")
EXEC_KEYS = ("ExecStart", "ExecStartPre", "ExecStartPost", "ExecReload", "ExecStop")


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
    assert Path(found).exists(), "systemd-analyze is missing: apt-get install systemd"
    return found


def directives(text: str) -> dict[str, list[str]]:
    """`Key=value` lines of a unit (every value of a repeated key, in order)."""
    found: dict[str, list[str]] = defaultdict(list)
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, value = line.split("=", 1)
            found[key.strip()].append(value.strip())
    return found


def exposure(unit: str | Path, *, root: Path | None = None, threshold: float = 10.0) -> float:
    """The overall exposure `systemd-analyze security --offline=true` gives the unit.

    systemd's own `--threshold=` check runs too: it fails above `threshold`.
    """
    command = [systemd_analyze(), "security", "--offline=true", f"--threshold={threshold * 10:g}"]
    if root is not None:
        command.append(f"--root={root}")
    done = subprocess.run(
        [*command, str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    match = EXPOSURE.search(done.stdout)
    assert match, done.stdout[-2000:] + done.stderr[-2000:]
    score = float(match.group(2))
    assert (done.returncode == 0) == (score <= threshold), (done.returncode, score, done.stderr)
    return score


def stub_executable(root: Path, command_line: str) -> None:
    """An executable at the path an Exec*= line names (after systemd's prefixes), in `root`."""
    path = command_line.lstrip("-@:+!").split()[0]
    assert path.startswith("/"), f"Exec*= needs an absolute path: {command_line!r}"
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("#!/bin/sh\nexit 0\n")
    target.chmod(0o755)


def scratch_root(tmp_path: Path, units: dict[str, str], drop_ins: dict[str, str]) -> Path:
    """A root with the host's units, `units` in /etc/systemd/system and their binaries stubbed."""
    root = tmp_path / "root"
    shutil.copytree(HOST_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    system = root / "etc/systemd/system"
    system.mkdir(parents=True)
    for name, text in units.items():
        (system / name).write_text(text)
    for relative, text in drop_ins.items():
        (system / relative).parent.mkdir(parents=True, exist_ok=True)
        (system / relative).write_text(text)
    # a drop-in's unit is the host's own (Debian's mosquitto.service): its commands need stubs too
    extended = {relative.split(".d/", 1)[0] for relative in drop_ins} - set(units)
    texts = [*units.values(), *drop_ins.values(), *((HOST_UNITS / n).read_text() for n in extended)]
    for text in texts:
        for key in EXEC_KEYS:
            for line in directives(text).get(key, []):
                stub_executable(root, line)
    return root


def verify(root: Path, *units: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [systemd_analyze(), "verify", f"--root={root}", *units],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(("unit", "limit"), [(CONTROLLER, 2.0), (AGENT, 3.0)])
def test_exposure_is_within_the_limit(unit, limit):
    score = exposure(unit, threshold=limit)
    assert score <= limit, f"{unit.name}: exposure {score} > {limit}"


def test_exposure_check_sees_an_unhardened_unit(tmp_path):
    bare = tmp_path / "bare.service"
    bare.write_text("[Service]\nExecStart=/opt/edgefleet/bin/edgefleet controller run\n")
    assert exposure(bare) > 9.0


def test_units_verify_clean(tmp_path):
    units = {p.name: p.read_text() for p in (AGENT, CONTROLLER)}
    root = scratch_root(tmp_path, units, {})
    done = verify(root, *units)
    # verify says "ignoring" for an unknown key or a bad value and still exits 0: any output fails
    assert done.returncode == 0 and not (done.stdout + done.stderr).strip(), done.stderr


def test_verify_reports_a_unit_systemd_would_not_load_as_written(tmp_path):
    text = AGENT.read_text().replace("UMask=0077", "UMask=0077\nProtectKernelTunable=yes")
    root = scratch_root(tmp_path, {AGENT.name: text}, {})
    done = verify(root, AGENT.name)
    assert "Unknown key 'ProtectKernelTunable'" in done.stderr, done.stderr


def test_mosquitto_drop_in_verifies_clean_and_hardens_the_broker(tmp_path):
    assert MOSQUITTO_UNIT.exists(), (
        "Debian's mosquitto.service is missing: apt-get install mosquitto"
    )
    relative = "mosquitto.service.d/edgefleet.conf"
    root = scratch_root(tmp_path, {}, {relative: MOSQUITTO_DROP_IN.read_text()})
    done = verify(root, "mosquitto.service")
    assert done.returncode == 0 and not (done.stdout + done.stderr).strip(), done.stderr
    hardened = exposure("mosquitto.service", root=root)
    (root / "etc/systemd/system" / relative).unlink()
    packaged = exposure("mosquitto.service", root=root)
    assert hardened <= 3.0 < packaged, (hardened, packaged)


def test_mosquitto_drop_in_has_room_for_ten_thousand_clients():
    settings = directives(MOSQUITTO_DROP_IN.read_text())
    (nofile,) = settings["LimitNOFILE"]
    assert int(nofile.split(":")[0]) >= 10_000 + 1_000
    assert settings["Restart"] == ["on-failure"]


def test_agent_reaches_only_the_device_kinds_it_serves():
    settings = directives(AGENT.read_text())
    assert settings["DevicePolicy"] == ["closed"]
    assert "PrivateDevices" not in settings
    allowed = {entry.split()[0] for entry in settings["DeviceAllow"]}
    for kind in (
        "char-video4linux",  # cameras
        "char-usb_device",  # Coral USB, NCS2
        "/dev/apex_0",  # Edge TPU on PCIe / the Dev Board
        "char-nvhost*",  # Jetson
        "/dev/nvmap",
        "char-nvgpu*",
        "/dev/vchiq",  # Raspberry Pi
        "/dev/vcsm-cma",
        "char-dma_heap",
    ):
        assert kind in allowed, kind
    assert set(settings["SupplementaryGroups"][0].split()) >= {"video", "render"}


@pytest.mark.parametrize("unit", [AGENT, CONTROLLER])
def test_units_are_notify_services_with_a_watchdog(unit):
    settings = directives(unit.read_text())
    assert settings["Type"] == ["notify"]
    assert settings["NotifyAccess"] == ["main"]
    assert int(settings["WatchdogSec"][0]) > 0


def test_controller_keeps_no_capability():
    settings = directives(CONTROLLER.read_text())
    assert settings["CapabilityBoundingSet"] == [""]
    assert settings["AmbientCapabilities"] == [""]
