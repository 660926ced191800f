"""Edge TPU plugin: what it says about this machine, and which models it refuses.

No Edge TPU is attached here, so the probe is pointed at fixture trees and at real libraries
through its injectable root and library loader.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from pathlib import Path

import pytest

from agent.runtimes.base import (
    ModelLoadError,
    RuntimeOptions,
    RuntimeUnavailableError,
    load_runtime_class,
)
from agent.runtimes.edgetpu import (
    COMPILED_MARKER,
    EdgeTPUEnvironment,
    EdgeTPURuntime,
    check_compiled,
    library_name,
    probe_environment,
)


def _real_library(_name: str) -> ctypes.CDLL:
    # any real shared library stands in for libedgetpu: the probe only needs it to open
    found = ctypes.util.find_library("c")
    assert found, "no C library to open"
    return ctypes.CDLL(found)


def _usb_device(root: Path, usb_id: str) -> None:
    vendor, product = usb_id.split(":")
    device = root / "sys/bus/usb/devices/2-1"
    device.mkdir(parents=True)
    (device / "idVendor").write_text(vendor + "\n")
    (device / "idProduct").write_text(product + "\n")


def test_missing_library_is_the_reason(tmp_path):
    env = EdgeTPUEnvironment(root=tmp_path, open_library=lambda n: ctypes.CDLL(str(tmp_path / n)))
    probe = probe_environment(env)
    assert not probe.available
    assert f"{library_name()} not loadable" in probe.reason
    assert "libedgetpu1-std" in probe.reason


def test_library_without_a_device_says_no_tpu_is_attached(tmp_path):
    probe = probe_environment(EdgeTPUEnvironment(root=tmp_path, open_library=_real_library))
    assert not probe.available
    assert "loads but no Edge TPU is attached" in probe.reason
    assert "/dev/apex_0" in probe.reason and "1a6e:089a" in probe.reason


def test_pcie_tpu_with_library_is_available(tmp_path):
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev/apex_0").write_text("")
    probe = probe_environment(EdgeTPUEnvironment(root=tmp_path, open_library=_real_library))
    assert probe.available, probe.reason
    assert "PCIe (/dev/apex_0)" in probe.reason
    assert probe.devices == frozenset({"EDGETPU"})


@pytest.mark.parametrize("usb_id", ["1a6e:089a", "18d1:9302"])
def test_usb_accelerator_with_library_is_available(tmp_path, usb_id):
    _usb_device(tmp_path, usb_id)
    probe = probe_environment(EdgeTPUEnvironment(root=tmp_path, open_library=_real_library))
    assert probe.available, probe.reason
    assert f"USB {usb_id}" in probe.reason


def test_other_usb_devices_are_not_a_tpu(tmp_path):
    _usb_device(tmp_path, "03e7:2485")  # an NCS2
    probe = probe_environment(EdgeTPUEnvironment(root=tmp_path, open_library=_real_library))
    assert not probe.available


def test_registry_finds_the_plugin_and_probe_never_raises():
    assert load_runtime_class("edgetpu") is EdgeTPURuntime
    probe = EdgeTPURuntime.probe()
    assert probe.key == "edgetpu"
    assert probe.reason


def test_plain_tflite_model_is_refused(blazeface_model):
    runtime = EdgeTPURuntime(num_threads=1)
    with pytest.raises(ModelLoadError, match="not compiled for the Edge TPU"):
        runtime.load(blazeface_model)
    with pytest.raises(ModelLoadError):
        runtime.input_details()


def test_compiled_model_passes_the_check_and_then_needs_the_library(tmp_path, blazeface_model):
    compiled = tmp_path / "model_edgetpu.tflite"
    compiled.write_bytes(blazeface_model.read_bytes() + COMPILED_MARKER)
    check_compiled(compiled)  # does not raise
    try:
        ctypes.CDLL(library_name())
    except OSError:
        pass
    else:
        pytest.fail("this check assumes a machine without libedgetpu")
    with pytest.raises(RuntimeUnavailableError, match="not loadable"):
        EdgeTPURuntime().load(compiled)


def test_create_targets_only_the_tpu():
    assert isinstance(
        EdgeTPURuntime.create(options=RuntimeOptions(device="EDGETPU")), EdgeTPURuntime
    )
    with pytest.raises(RuntimeUnavailableError, match="cannot target device CUDA"):
        EdgeTPURuntime.create(options=RuntimeOptions(device="CUDA"))
