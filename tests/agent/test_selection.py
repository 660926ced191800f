"""Runtime choice: device profile (the shipped YAMLs) × runtimes available × bundle variants.

Each row detects the profile from hardware facts, takes its effective runtime order and asks
`choose_runtime` which runtime, device and variant a bundle gets and why the others were passed
over. Probes are built per row to stand for what each kind of machine reports; the Edge TPU
row without `libedgetpu` uses the Edge TPU plugin's own probe on an empty root.
"""

from __future__ import annotations

import ctypes
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from agent.deploy.loader import ModelLoadFailed
from agent.runtimes.base import RuntimeProbe
from agent.runtimes.edgetpu import EdgeTPUEnvironment, probe_environment
from agent.selection import choose_runtime
from device_profiles.loader import load_profiles
from device_profiles.probe import HardwareFacts, detect_profile, effective_runtimes
from device_profiles.schema import RuntimePreference
from ota.manifest import FileEntry, InputSpec, Manifest, PostprocessSpec, Variant

PROFILES = load_profiles()

HOSTS = {
    "jetson-nano": HardwareFacts(
        arch="aarch64",
        device_tree_model="NVIDIA Jetson Nano Developer Kit",
        present_paths=frozenset({"etc/nv_tegra_release"}),
    ),
    "coral-dev-board": HardwareFacts(
        arch="aarch64",
        device_tree_model="Freescale i.MX8MQ Phanbein",
        present_paths=frozenset({"dev/apex_0"}),
    ),
    "coral-usb-on-x86": HardwareFacts(arch="x86_64", usb_ids=frozenset({"1a6e:089a"})),
    "ncs2-on-x86": HardwareFacts(arch="x86_64", usb_ids=frozenset({"03e7:2485"})),
    "raspberry-pi-4": HardwareFacts(arch="aarch64", device_tree_model="Raspberry Pi 4 Model B"),
    "raspberry-pi-3": HardwareFacts(arch="armv7l", device_tree_model="Raspberry Pi 3 Model B"),
    "x86-64": HardwareFacts(arch="x86_64"),
    "arm64": HardwareFacts(arch="aarch64"),
    "cloud-gpu": HardwareFacts(arch="x86_64", nvidia_driver_version="NVRM version: 535.104"),
}


def _ok(key: str, reason: str, *devices: str) -> RuntimeProbe:
    return RuntimeProbe(key, True, reason, frozenset(devices))


def _missing(key: str, reason: str) -> RuntimeProbe:
    return RuntimeProbe(key, False, reason)


def _edgetpu_without_library() -> RuntimeProbe:
    # the plugin's real probe on a root with no TPU and a library path where nothing is
    nowhere = Path("/nonexistent-edgefleet")
    return probe_environment(
        EdgeTPUEnvironment(root=nowhere, open_library=lambda n: ctypes.CDLL(str(nowhere / n)))
    )


CPU_ONLY = {
    "litert": _ok("litert", "ai-edge-litert 1.2 on CPU", "CPU"),
    "onnx": _ok("onnx", "onnxruntime 1.20; providers CPUExecutionProvider", "CPU"),
    "opencv": _ok("opencv", "OpenCV 4.10 dnn on CPU", "CPU"),
    # OpenVINO 2023 and later have no MYRIAD plugin
    "openvino": _ok("openvino", "OpenVINO 2024.4; devices CPU", "CPU"),
    "tensorrt": _missing("tensorrt", "package tensorrt is not installed"),
}


def probes(**changes: RuntimeProbe | None) -> list[RuntimeProbe]:
    table = {**CPU_ONLY, "edgetpu": _edgetpu_without_library(), **changes}
    return [p for p in table.values() if p is not None]


JETSON = {
    "tensorrt": _ok("tensorrt", "TensorRT 8.2.1 on NVIDIA Tegra X1", "CUDA"),
    "onnx": _ok("onnx", "onnxruntime-gpu 1.11; CUDA, CPU", "CUDA", "CPU"),
    "openvino": None,
}
TPU = {"edgetpu": _ok("edgetpu", "ai-edge-litert with libedgetpu.so.1; Edge TPU", "EDGETPU")}


def bundle(*variants: tuple[str, str] | tuple[str, str, str]) -> Manifest:
    """A manifest with one variant per (runtime, precision[, extra file])."""
    now = datetime.now(timezone.utc)
    built = []
    for runtime, precision, *extra in variants:
        model = f"{runtime}-{precision}/model"
        files = [FileEntry(path=p, sha256="0" * 64, size=1) for p in (model, *extra)]
        built.append(Variant(runtime=runtime, precision=precision, model=model, files=tuple(files)))
    return Manifest(
        name="matrix",
        version=1,
        created=now,
        expires=now + timedelta(days=1),
        labels=("face",),
        input=InputSpec(width=128, height=128),
        postprocess=PostprocessSpec(kind="blazeface"),
        variants=tuple(built),
    )


def order(host: str) -> list[RuntimePreference]:
    return effective_runtimes(detect_profile(HOSTS[host], PROFILES))


# host, available runtimes, bundle variants -> (runtime, device, variant), passed over {label: why}
MATRIX = [
    pytest.param(
        "jetson-nano", JETSON, [("onnx", "fp32")],
        ("tensorrt", "CUDA", "onnx", "fp16"), {},
        id="jetson-tensorrt-from-onnx",
    ),
    pytest.param(
        "jetson-nano", {**JETSON, "tensorrt": _missing("tensorrt", "No module named 'tensorrt'")},
        [("onnx", "fp32")],
        ("onnx", "CUDA", "onnx", "fp32"), {"tensorrt/CUDA": "No module named 'tensorrt'"},
        id="jetson-without-tensorrt-onnx-cuda",
    ),
    pytest.param(
        "jetson-nano", {**JETSON, "tensorrt": CPU_ONLY["tensorrt"], "onnx": CPU_ONLY["onnx"]},
        [("onnx", "fp32")],
        ("onnx", "CPU", "onnx", "fp32"),
        {"tensorrt/CUDA": "not installed", "onnx/CUDA": "no CUDA here"},
        id="jetson-cpu-onnxruntime",
    ),
    pytest.param(
        "jetson-nano", JETSON, [("litert", "fp32")],
        ("litert", "CPU", "litert", "fp32"),
        {"tensorrt/CUDA": "no tensorrt or onnx variant", "onnx/CUDA": "no onnx variant",
         "onnx/CPU": "no onnx variant"},
        id="jetson-tflite-only-bundle",
    ),
    pytest.param(
        "cloud-gpu", JETSON, [("onnx", "fp32"), ("litert", "fp32")],
        ("tensorrt", "CUDA", "onnx", "fp16"), {},
        id="cloud-gpu-tensorrt",
    ),
    pytest.param(
        "ncs2-on-x86", {}, [("openvino", "fp16"), ("onnx", "fp32"), ("litert", "fp32")],
        ("openvino", "CPU", "openvino", "fp16"),
        {"openvino/MYRIAD": "no MYRIAD here (OpenVINO 2024.4; devices CPU; offers CPU)"},
        id="ncs2-new-openvino-falls-back-to-cpu",
    ),
    pytest.param(
        "ncs2-on-x86", {"openvino": _missing("openvino", "package openvino is not installed")},
        [("openvino", "fp16"), ("onnx", "fp32"), ("litert", "fp32")],
        ("onnx", "CPU", "onnx", "fp32"),
        {"openvino/MYRIAD": "not installed", "openvino/CPU": "not installed"},
        id="ncs2-without-openvino-onnx",
    ),
    pytest.param(
        "ncs2-on-x86", {}, [("litert", "fp32")],
        ("litert", "CPU", "litert", "fp32"),
        {"openvino/MYRIAD": "no MYRIAD", "openvino/CPU": "no openvino variant",
         "onnx/CPU": "no onnx variant"},
        id="ncs2-tflite-only-bundle",
    ),
    pytest.param(
        "ncs2-on-x86", {"openvino": _ok("openvino", "OpenVINO 2022.3", "CPU", "MYRIAD")},
        [("openvino", "fp16"), ("onnx", "fp32")],
        ("openvino", "MYRIAD", "openvino", "fp16"), {},
        id="ncs2-openvino-2022-uses-the-stick",
    ),
    pytest.param(
        "coral-usb-on-x86", {}, [("edgetpu", "int8"), ("litert", "int8")],
        ("litert", "CPU", "litert", "int8"),
        {"edgetpu/EDGETPU": "libedgetpu.so.1 not loadable", "openvino/CPU": "no openvino variant",
         "onnx/CPU": "no onnx variant"},
        id="coral-usb-without-libedgetpu-litert-cpu",
    ),
    pytest.param(
        "coral-usb-on-x86", TPU, [("edgetpu", "int8"), ("litert", "int8")],
        ("edgetpu", "EDGETPU", "edgetpu", "int8"), {},
        id="coral-usb-with-tpu",
    ),
    pytest.param(
        "coral-dev-board", TPU, [("litert", "fp32")],
        ("litert", "CPU", "litert", "fp32"), {"edgetpu/EDGETPU": "no edgetpu variant"},
        id="coral-board-bundle-without-edgetpu-variant",
    ),
    pytest.param(
        "raspberry-pi-4", {}, [("litert", "fp32"), ("litert", "int8")],
        ("litert", "CPU", "litert", "int8"), {},
        id="pi4-prefers-the-int8-variant",
    ),
    pytest.param(
        "raspberry-pi-3", {}, [("litert", "fp32")],
        ("litert", "CPU", "litert", "fp32"), {},
        id="pi3-runs-fp32-when-no-int8-variant",
    ),
    pytest.param(
        "x86-64", {}, [("onnx", "fp32"), ("opencv", "fp32")],
        ("onnx", "CPU", "onnx", "fp32"), {"openvino/CPU": "no openvino variant"},
        id="x86-centerface-bundle",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("host", "changes", "variants", "expected", "passed"), MATRIX)
def test_selection_matrix(host, changes, variants, expected, passed):
    manifest = bundle(*variants)
    choice = choose_runtime(manifest, probes(**changes), order(host))
    runtime, device, variant_runtime, precision = expected
    got = (choice.runtime, choice.device, choice.variant.runtime, choice.precision)
    assert got == (runtime, device, variant_runtime, precision), choice.reason
    assert set(choice.passed_over) == set(passed), choice.passed_over
    for label, why in passed.items():
        assert why in choice.passed_over[label], (label, choice.passed_over[label])
        assert label in choice.reason


def test_bundle_with_no_usable_variant_names_every_reason():
    manifest = bundle(("edgetpu", "int8"))
    with pytest.raises(ModelLoadFailed) as caught:
        choose_runtime(manifest, probes(), order("arm64"))
    assert caught.value.reason == "no_runtime"
    detail = caught.value.detail
    assert "bundle carries edgetpu int8" in detail
    for label in ("litert/CPU", "onnx/CPU", "opencv/CPU"):
        runtime = label.split("/")[0]
        assert f"{label}: bundle has no {runtime} variant" in detail


def test_nothing_available_names_each_probe_reason():
    nothing = {k: _missing(k, f"{k} is broken here") for k in CPU_ONLY}
    with pytest.raises(ModelLoadFailed) as caught:
        choose_runtime(bundle(("litert", "fp32")), probes(**nothing), order("x86-64"))
    for key in ("openvino", "onnx", "litert", "opencv"):
        assert f"{key}/CPU: {key} is broken here" in caught.value.detail


def test_int8_tensorrt_needs_a_calibration_cache():
    prefs = [
        RuntimePreference(runtime="tensorrt", precision="int8", device="CUDA"),
        RuntimePreference(runtime="onnx", precision="fp32", device="CPU"),
    ]
    plain = choose_runtime(bundle(("onnx", "fp32")), probes(**JETSON), prefs)
    assert plain.runtime == "onnx"
    assert "calibration cache" in plain.passed_over["tensorrt/CUDA"]

    calibrated = bundle(("onnx", "fp32"), ("tensorrt", "int8", "tensorrt-int8/model.calib"))
    choice = choose_runtime(calibrated, probes(**JETSON), prefs)
    assert (choice.runtime, choice.precision, choice.variant.runtime) == (
        "tensorrt",
        "int8",
        "tensorrt",
    )


def test_plain_runtime_keys_still_work_without_devices():
    choice = choose_runtime(bundle(("onnx", "fp32")), probes(**JETSON), ["tensorrt", "onnx"])
    assert (choice.runtime, choice.device) == ("tensorrt", None)
