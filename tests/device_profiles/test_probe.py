from __future__ import annotations

from pathlib import Path

import pytest

from device_profiles.errors import NoProfileMatchedError, UnknownProfileError
from device_profiles.loader import load_profiles
from device_profiles.probe import (
    HardwareFacts,
    ProfileMatch,
    detect,
    detect_profile,
    effective_runtimes,
    probe_hardware,
)
from device_profiles.schema import DeviceProfile
from tests.device_profiles import fixtures as fx


@pytest.fixture(scope="module")
def profiles() -> dict[str, DeviceProfile]:
    return load_profiles()


def detect_at(root: Path, arch: str, profiles, forced: str | None = None) -> ProfileMatch:
    return detect_profile(probe_hardware(root, arch=arch), profiles, forced)


def runtimes(detection: ProfileMatch) -> list[tuple[str, str | None]]:
    return [(p.runtime, p.device) for p in effective_runtimes(detection)]


def test_probe_reads_model_usb_ids_driver_and_paths(tmp_path: Path):
    fx.device_tree_model(tmp_path, "NVIDIA Jetson Nano Developer Kit")
    fx.write(tmp_path, "etc/nv_tegra_release")
    fx.usb_root_hub(tmp_path)
    fx.usb_device(tmp_path, "2-1", "03E7", "2485")
    fx.nvidia_driver(tmp_path)
    facts = probe_hardware(tmp_path, arch="arm64")
    assert facts.device_tree_model == "NVIDIA Jetson Nano Developer Kit"
    assert facts.usb_ids == {"1d6b:0002", "03e7:2485"}
    assert "etc/nv_tegra_release" in facts.present_paths
    assert "dev/apex_0" not in facts.present_paths
    assert facts.nvidia_driver
    assert facts.nvidia_driver_version is not None
    assert "535.154.05" in facts.nvidia_driver_version
    assert facts.arch == "aarch64"


def test_probe_of_an_empty_root_finds_nothing(tmp_path: Path):
    facts = probe_hardware(tmp_path, arch="x86_64")
    assert facts == HardwareFacts(arch="x86_64")
    assert not facts.nvidia_driver


def test_device_tree_model_falls_back_to_sysfs(tmp_path: Path):
    fx.device_tree_model(tmp_path, "Raspberry Pi 3 Model B Plus Rev 1.3", sysfs=True)
    assert probe_hardware(tmp_path, arch="armv7l").device_tree_model == (
        "Raspberry Pi 3 Model B Plus Rev 1.3"
    )


def test_jetson_nano_is_detected(tmp_path: Path, profiles):
    found = detect_at(fx.jetson_nano(tmp_path), "aarch64", profiles)
    assert found.profile.name == "jetson-nano"
    assert found.accelerators_found == ()
    assert runtimes(found)[0] == ("tensorrt", "CUDA")
    assert any("chose jetson-nano" in r and "generic-arm64" in r for r in found.reasons)
    assert any("etc/nv_tegra_release exists" in r for r in found.reasons)


def test_jetson_model_without_tegra_release_is_only_generic_arm64(tmp_path: Path, profiles):
    fx.device_tree_model(tmp_path, "NVIDIA Jetson Nano Developer Kit")
    found = detect_at(tmp_path, "aarch64", profiles)
    assert found.profile.name == "generic-arm64"
    assert any("etc/nv_tegra_release is missing" in r for r in found.reasons)


def test_coral_dev_board_is_detected(tmp_path: Path, profiles):
    found = detect_at(fx.coral_dev_board(tmp_path), "aarch64", profiles)
    assert found.profile.name == "coral-dev-board"
    assert runtimes(found)[0] == ("edgetpu", "EDGETPU")
    assert any("Phanbein" in r for r in found.reasons)


@pytest.mark.parametrize(
    ("model", "arch", "expected"),
    [
        ("Raspberry Pi 4 Model B Rev 1.4", "aarch64", "raspberry-pi-4"),
        ("Raspberry Pi 4 Model B Rev 1.4", "armv7l", "raspberry-pi-4"),
        ("Raspberry Pi 3 Model B Plus Rev 1.3", "aarch64", "raspberry-pi-3"),
        ("Raspberry Pi 3 Model B Rev 1.2", "armv7l", "raspberry-pi-3"),
    ],
)
def test_raspberry_pis_are_detected(tmp_path: Path, profiles, model, arch, expected):
    found = detect_at(fx.raspberry_pi(tmp_path, model), arch, profiles)
    assert found.profile.name == expected
    assert runtimes(found) == [("litert", "CPU"), ("onnx", "CPU")]


@pytest.mark.parametrize("product", ["089a", "9302"])
def test_coral_usb_on_x86_host_is_an_accelerator_before_host_runtimes(
    tmp_path: Path, profiles, product
):
    fx.usb_root_hub(tmp_path)
    fx.usb_device(tmp_path, "1-2", "1a6e" if product == "089a" else "18d1", product)
    found = detect_at(tmp_path, "x86_64", profiles)
    assert found.profile.name == "generic-x86-64"
    assert [p.name for p in found.accelerator_profiles] == ["coral-usb"]
    assert [a.kind for a in found.accelerators_found] == ["tpu"]
    assert [(p.runtime, p.device, p.precision) for p in effective_runtimes(found)] == [
        ("edgetpu", "EDGETPU", "int8"),
        ("openvino", "CPU", "fp32"),
        ("onnx", "CPU", "fp32"),
        ("litert", "CPU", "fp32"),
        ("opencv", "CPU", "fp32"),
        # The stick's own quantised CPU fallback, after everything the host prefers.
        ("litert", "CPU", "int8"),
    ]
    assert any("coral-usb attached" in r for r in found.reasons)


def test_ncs2_host_runs_openvino_myriad_first_then_cpu_fallbacks(tmp_path: Path, profiles):
    fx.usb_root_hub(tmp_path)
    fx.usb_device(tmp_path, "1-1", "03e7", "2485")
    found = detect_at(tmp_path, "x86_64", profiles)
    assert found.profile.name == "generic-x86-64"
    assert [a.usb_id for a in found.accelerators_found] == ["03e7:2485"]
    effective = effective_runtimes(found)
    assert (effective[0].runtime, effective[0].device) == ("openvino", "MYRIAD")
    assert effective[0].note is not None and "2022.3" in effective[0].note
    assert runtimes(found)[1:] == [
        ("openvino", "CPU"),
        ("onnx", "CPU"),
        ("litert", "CPU"),
        ("opencv", "CPU"),
    ]


def test_usb_accelerator_on_a_jetson_keeps_tensorrt_ahead_of_cpu(tmp_path: Path, profiles):
    fx.jetson_nano(tmp_path)
    fx.usb_device(tmp_path, "1-2", "18d1", "9302")
    found = detect_at(tmp_path, "aarch64", profiles)
    assert found.profile.name == "jetson-nano"
    assert runtimes(found)[:3] == [("edgetpu", "EDGETPU"), ("tensorrt", "CUDA"), ("onnx", "CUDA")]
    # The stick's own CPU fallback comes only after all of the Jetson's choices.
    assert [p.runtime for p in effective_runtimes(found)][-1] == "litert"


def test_usb_accelerator_alone_on_an_unknown_host_uses_its_own_profile(tmp_path: Path, profiles):
    fx.usb_device(tmp_path, "1-1", "03e7", "2485")
    found = detect_at(tmp_path, "riscv64", profiles)
    assert found.profile.name == "intel-ncs2"
    assert found.accelerator_profiles == ()
    assert runtimes(found)[0] == ("openvino", "MYRIAD")


def test_cloud_gpu_wins_over_generic_x86_when_the_nvidia_driver_is_loaded(tmp_path: Path, profiles):
    found = detect_at(fx.nvidia_driver(tmp_path), "x86_64", profiles)
    assert found.profile.name == "cloud-gpu"
    assert runtimes(found)[0] == ("tensorrt", "CUDA")
    assert any("NVIDIA driver loaded" in r for r in found.reasons)


def test_nvidia_driver_on_arm_is_not_a_cloud_gpu(tmp_path: Path, profiles):
    found = detect_at(fx.nvidia_driver(tmp_path), "aarch64", profiles)
    assert found.profile.name == "generic-arm64"


@pytest.mark.parametrize(
    ("arch", "expected"),
    [("x86_64", "generic-x86-64"), ("amd64", "generic-x86-64"), ("aarch64", "generic-arm64")],
)
def test_generic_hosts_are_detected_by_arch(tmp_path: Path, profiles, arch, expected):
    found = detect_at(tmp_path, arch, profiles)
    assert found.profile.name == expected
    assert found.accelerators_found == ()
    assert any(f"chose {expected}" in r for r in found.reasons)


def test_forced_profile_overrides_detection(tmp_path: Path, profiles):
    found = detect_at(fx.jetson_nano(tmp_path), "aarch64", profiles, forced="generic-arm64")
    assert found.profile.name == "generic-arm64"
    assert any("forced" in r for r in found.reasons)


def test_forced_profile_applies_where_nothing_matches(tmp_path: Path, profiles):
    found = detect_at(tmp_path, "riscv64", profiles, forced="generic-arm64")
    assert found.profile.name == "generic-arm64"


def test_forcing_an_unknown_profile_is_an_error(tmp_path: Path, profiles):
    with pytest.raises(UnknownProfileError, match="toaster"):
        detect_at(tmp_path, "x86_64", profiles, forced="toaster")


def test_nothing_matching_is_an_error_with_the_reasons(tmp_path: Path, profiles):
    with pytest.raises(NoProfileMatchedError) as caught:
        detect_at(tmp_path, "riscv64", profiles)
    assert "arch riscv64 is not x86_64" in str(caught.value)


def test_every_profile_gets_a_reason(tmp_path: Path, profiles):
    found = detect_at(tmp_path, "x86_64", profiles)
    for name in profiles:
        assert any(r.startswith(f"{name} ") for r in found.reasons), name


def test_detect_probes_and_chooses_in_one_call(tmp_path: Path):
    assert detect(fx.coral_dev_board(tmp_path), arch="aarch64").profile.name == "coral-dev-board"
