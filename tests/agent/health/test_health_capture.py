"""Health payloads captured from the real agent code on real machines decode with the wire model.

captured-x86_64.json: the agent daemon on the 2-core x86-64 build machine (no thermal zones,
no Jetson/Pi/Coral tools, no NVML), every device source asked for. captured-nvidia-h200.json:
the same health code on an NVIDIA H200 host with pynvml; the CSV beside it is `nvidia-smi`'s
reading taken right after, to compare against.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from protocol.codec import decode
from protocol.messages import Health

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "health"


def test_captured_x86_64_payload_decodes_and_names_every_absent_source() -> None:
    health = decode((FIXTURES / "captured-x86_64.json").read_bytes(), Health)
    assert health.device == "x86-host"
    assert health.mem_total_mb and health.mem_used_mb and health.disk_free_mb
    assert health.cpu_percent is not None and health.load1 is not None
    [camera] = health.cameras
    assert camera.connected and camera.frames_in > 0 and camera.since is not None
    # nothing on this machine provides these: each is named with its reason, none guessed
    assert set(health.unavailable) == {
        "thermal",
        "tegrastats",
        "vcgencmd_throttled",
        "edgetpu_temperature",
        "nvml",
    }
    assert health.accelerators == () and health.throttling == {} and health.power_w == {}


def test_captured_nvml_payload_matches_nvidia_smi() -> None:
    health = decode((FIXTURES / "captured-nvidia-h200.json").read_bytes(), Health)
    with (FIXTURES / "captured-nvidia-h200-nvidia-smi.csv").open() as smi:
        row = next(csv.reader(smi))
    index, name, util, _used, total, temp, power, sm_clock = (c.strip() for c in row)
    assert name == "NVIDIA H200"
    [gpu] = health.accelerators
    assert (gpu.name, gpu.kind) == (f"nvml-{index}", "gpu")
    assert gpu.memory_total_mb == float(total)
    assert gpu.load_percent == float(util)
    assert gpu.temperature_c == pytest.approx(float(temp), abs=2)
    assert gpu.clock_mhz == pytest.approx(float(sm_clock), rel=0.2)
    assert gpu.power_w == pytest.approx(float(power), rel=0.1)
    assert "nvml" not in health.unavailable
