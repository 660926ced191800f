from __future__ import annotations

from pathlib import Path

import pytest

from device_profiles.errors import ProfileFileError, UnknownProfileError
from device_profiles.loader import PACKAGE_DIR, get_profile, load_profiles
from device_profiles.schema import DeviceProfile
from protocol.events import RuntimeKey

EXPECTED = {
    "jetson-nano",
    "coral-dev-board",
    "coral-usb",
    "raspberry-pi-3",
    "raspberry-pi-4",
    "intel-ncs2",
    "generic-x86-64",
    "generic-arm64",
    "cloud-gpu",
}

GOOD = """\
name: tiny
description: A test profile.
match: {arch: [x86_64]}
priority: 1
runtimes:
  - {runtime: onnx, precision: fp32, device: CPU}
camera: {kind: usb, source_template: "/dev/video{index}"}
"""


def order(profile: DeviceProfile) -> list[tuple[str, str | None]]:
    return [(p.runtime, p.device) for p in profile.runtimes]


def test_every_shipped_yaml_loads_as_a_profile_named_after_its_file():
    files = sorted(PACKAGE_DIR.glob("*.yaml"))
    profiles = load_profiles()
    assert {f.stem for f in files} == set(profiles) == EXPECTED
    for name, profile in profiles.items():
        assert profile.name == name
        assert profile.runtimes


def test_jetson_nano_prefers_tensorrt_fp16_then_onnx_cuda_cpu_then_litert():
    nano = get_profile("jetson-nano")
    assert order(nano) == [
        ("tensorrt", "CUDA"),
        ("onnx", "CUDA"),
        ("onnx", "CPU"),
        ("litert", "CPU"),
    ]
    assert nano.runtimes[0].precision == "fp16"
    assert nano.camera.kind == "csi"
    assert nano.camera.source_template.startswith("nvarguscamerasrc")
    assert "tegrastats" in nano.health


def test_runtime_orders_of_the_other_kinds():
    profiles = load_profiles()
    assert [p.runtime for p in profiles["coral-dev-board"].runtimes] == ["edgetpu", "litert"]
    assert profiles["coral-usb"].runtimes[0].runtime == "edgetpu"
    assert order(profiles["generic-x86-64"]) == [
        ("openvino", "CPU"),
        ("onnx", "CPU"),
        ("litert", "CPU"),
        ("opencv", "CPU"),
    ]
    assert [p.runtime for p in profiles["generic-arm64"].runtimes] == ["litert", "onnx", "opencv"]
    assert order(profiles["cloud-gpu"]) == [
        ("tensorrt", "CUDA"),
        ("onnx", "CUDA"),
        ("openvino", "CPU"),
        ("onnx", "CPU"),
    ]
    for pi in ("raspberry-pi-3", "raspberry-pi-4"):
        profile = profiles[pi]
        assert order(profile) == [("litert", "CPU"), ("onnx", "CPU")]
        assert "vcgencmd_throttled" in profile.health
        assert profile.camera.source_template.startswith("libcamerasrc")


def test_ncs2_profile_says_openvino_dropped_myriad_and_falls_back_to_cpu():
    ncs = get_profile("intel-ncs2")
    first = ncs.runtimes[0]
    assert (first.runtime, first.device) == ("openvino", "MYRIAD")
    assert first.note is not None and "2022.3" in first.note
    assert any("2022.3" in n for n in ncs.notes)
    assert order(ncs)[1:] == [("openvino", "CPU"), ("onnx", "CPU"), ("litert", "CPU")]


def test_camera_templates_fill_in_with_the_agent_settings():
    nano = get_profile("jetson-nano")
    pipeline = nano.camera.source(sensor_id=0, width=1280, height=720, fps=30)
    assert "sensor-id=0" in pipeline and "width=1280" in pipeline and "{" not in pipeline
    assert get_profile("generic-x86-64").camera.source(index=2) == "/dev/video2"


def test_loads_from_another_directory(tmp_path: Path):
    (tmp_path / "tiny.yaml").write_text(GOOD)
    assert list(load_profiles(tmp_path)) == ["tiny"]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("name: [unclosed\n", "not valid YAML"),
        ("- just\n- a list\n", "expected a mapping"),
        (GOOD.replace("priority: 1\n", "priority: 1\ncolour: red\n"), "colour"),
        (GOOD.replace("runtime: onnx", "runtime: cuda"), "runtime"),
        (GOOD.replace("match: {arch: [x86_64]}", "match: {}"), "at least one criterion"),
        (GOOD.replace('"/dev/video{index}"', '"/dev/video{camera}"'), "camera"),
        (GOOD.replace("name: tiny", "name: other"), "differs from file name"),
    ],
)
def test_bad_profile_file_error_names_the_file(tmp_path: Path, content: str, problem: str):
    (tmp_path / "tiny.yaml").write_text(content)
    with pytest.raises(ProfileFileError) as caught:
        load_profiles(tmp_path)
    assert caught.value.path == tmp_path / "tiny.yaml"
    assert "tiny.yaml" in str(caught.value)
    assert problem in str(caught.value)


def test_unknown_profile_name_lists_the_known_ones():
    with pytest.raises(UnknownProfileError) as caught:
        get_profile("toaster")
    assert "toaster" in str(caught.value)
    assert "jetson-nano" in caught.value.known


def test_runtimes_in_profiles_are_runtime_keys(tmp_path: Path):
    (tmp_path / "tiny.yaml").write_text(GOOD)
    tiny = load_profiles(tmp_path)["tiny"]
    assert tiny.runtimes[0].runtime is RuntimeKey.ONNX
    for profile in load_profiles().values():
        assert all(isinstance(p.runtime, RuntimeKey) for p in profile.runtimes)


@pytest.mark.parametrize("key", list(RuntimeKey))
def test_every_runtime_key_may_be_named_in_a_profile(tmp_path: Path, key: RuntimeKey):
    (tmp_path / "tiny.yaml").write_text(GOOD.replace("runtime: onnx", f"runtime: {key.value}"))
    assert load_profiles(tmp_path)["tiny"].runtimes[0].runtime is key
