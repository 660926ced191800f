"""Runtime workers in device profiles: which runtime runs under which interpreter, per device."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from device_profiles.loader import load_profiles
from device_profiles.probe import detect_profile, effective_workers, probe_hardware
from device_profiles.schema import DeviceProfile, RuntimeWorker
from tests.device_profiles import fixtures as fx


@pytest.fixture(scope="module")
def profiles() -> dict[str, DeviceProfile]:
    return load_profiles()


def test_devices_without_python_311_vendor_packages_name_their_worker(profiles) -> None:
    jetson = profiles["jetson-nano"].workers
    assert set(jetson) == {"tensorrt"}
    assert (jetson["tensorrt"].python, jetson["tensorrt"].python_version) == (
        "/usr/bin/python3",
        "3.6",
    )
    coral = profiles["coral-dev-board"].workers
    assert coral["edgetpu"].python == "/usr/bin/python3"
    assert coral["edgetpu"].python_version == "3.7"
    ncs2 = profiles["intel-ncs2"].workers
    assert ncs2["openvino"].python.startswith("/opt/edgefleet/openvino-2022.3/")


def test_devices_with_python_311_run_everything_in_process(profiles) -> None:
    for name in ("raspberry-pi-4", "generic-x86-64", "generic-arm64", "cloud-gpu"):
        assert profiles[name].workers == {}, name


@pytest.mark.parametrize(
    "bad",
    [
        {"python": "python3", "python_version": "3.6"},  # relative: which one would run?
        {"python": "/usr/bin/python3", "python_version": "three"},
        {"python": "/usr/bin/python3", "python_version": "3.6", "extra": 1},
        {"python": "/usr/bin/python3", "python_version": "3.6", "python_path": ["lib"]},
    ],
)
def test_a_worker_entry_is_checked(bad) -> None:
    with pytest.raises(ValidationError):
        RuntimeWorker.model_validate(bad)


def test_an_ncs2_on_a_plain_host_brings_its_openvino_worker(tmp_path: Path, profiles) -> None:
    fx.usb_root_hub(tmp_path)
    fx.usb_device(tmp_path, "2-1", "03E7", "2485")
    detection = detect_profile(probe_hardware(tmp_path, arch="x86_64"), profiles)
    assert detection.profile.name == "generic-x86-64"
    workers = effective_workers(detection)
    assert set(workers) == {"openvino"}
    assert workers["openvino"] == profiles["intel-ncs2"].workers["openvino"]


def test_the_hosts_worker_wins_over_an_add_ons(tmp_path: Path, profiles) -> None:
    fx.device_tree_model(tmp_path, "NVIDIA Jetson Nano Developer Kit")
    fx.write(tmp_path, "etc/nv_tegra_release")
    fx.usb_root_hub(tmp_path)
    fx.usb_device(tmp_path, "2-1", "03E7", "2485")
    detection = detect_profile(probe_hardware(tmp_path, arch="aarch64"), profiles)
    workers = effective_workers(detection)
    assert workers["tensorrt"] == profiles["jetson-nano"].workers["tensorrt"]
    assert workers["openvino"] == profiles["intel-ncs2"].workers["openvino"]
