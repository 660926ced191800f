"""Health source parsers on recorded samples, and readers on recorded filesystem trees."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from agent.health.sources import (
    DeviceHealth,
    HealthSourceError,
    decode_throttled,
    first_line,
    parse_tegrastats,
    parse_throttled,
    with_device_health,
)
from agent.health.system import SystemHealth
from protocol.codec import decode, encode
from protocol.messages import Health

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "health"


def _line(name: str) -> str:
    return (FIXTURES / name).read_text().strip()


def test_tegrastats_jetpack46_nano() -> None:
    s = parse_tegrastats(_line("tegrastats-jetpack46-nano.txt"))
    assert (s.ram_used_mb, s.ram_total_mb) == (2164.0, 3964.0)
    assert s.cpu_percent == [12.0, 5.0, 9.0, 3.0]
    assert s.cpu_freq_mhz == [1479.0] * 4
    assert (s.gpu_percent, s.gpu_freq_mhz) == (38.0, 921.0)
    assert (s.emc_percent, s.emc_freq_mhz) == (4.0, 1600.0)
    assert s.temperatures_c == {
        "pll": 30.0,
        "cpu": 32.5,
        "pmic": 100.0,
        "gpu": 30.5,
        "ao": 39.0,
        "thermal": 31.25,
    }
    assert s.power_mw == {
        "POM_5V_IN": (4447.0, 3612.0),
        "POM_5V_GPU": (1120.0, 687.0),
        "POM_5V_CPU": (369.0, 402.0),
    }


def test_tegrastats_jetpack46_xavier_nx_with_offline_cores() -> None:
    s = parse_tegrastats(_line("tegrastats-jetpack46-xavier-nx.txt"))
    assert s.cpu_percent == [21.0, 14.0, None, None, 9.0, 11.0]
    assert s.gpu_percent == 63.0
    assert s.power_mw["VDD_IN"] == (5126.0, 4999.0)
    assert set(s.power_mw) == {"VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"}
    assert "RAM" not in s.power_mw and "SWAP" not in s.power_mw


def test_tegrastats_jetpack5_orin_drops_absent_sensors_and_reads_milliwatts() -> None:
    s = parse_tegrastats(_line("tegrastats-jetpack5-orin.txt"))
    assert (s.ram_used_mb, s.ram_total_mb) == (5390.0, 30536.0)
    assert s.cpu_percent[:4] == [3.0, 2.0, 0.0, 1.0] and s.cpu_percent[4:] == [None] * 4
    assert (s.gpu_percent, s.gpu_freq_mhz) == (45.0, 611.0)
    assert s.emc_percent == 7.0
    # CV0/CV1/CV2 read -256C: sensors that are not fitted are left out, not reported as cold
    assert not any(name.startswith("cv") for name in s.temperatures_c)
    assert s.temperatures_c["tj"] == 43.968 and s.temperatures_c["gpu"] == 42.5
    assert s.power_mw["VDD_GPU_SOC"] == (2400.0, 2390.0)
    assert s.power_mw["VIN_SYS_5V0"] == (3224.0, 3224.0)


def test_tegrastats_garbage_is_refused() -> None:
    with pytest.raises(HealthSourceError):
        parse_tegrastats("tegrastats: command not supported")


@pytest.mark.parametrize(
    ("sample", "true_flags"),
    [
        (
            "vcgencmd-throttled-0x50005.txt",
            {
                "under_voltage_now",
                "throttled_now",
                "under_voltage_since_boot",
                "throttled_since_boot",
            },
        ),
        ("vcgencmd-throttled-0x0.txt", set()),
        ("vcgencmd-throttled-0x80008.txt", {"soft_temp_limit_now", "soft_temp_limit_since_boot"}),
    ],
)
def test_raspberry_pi_throttle_flags(sample: str, true_flags: set[str]) -> None:
    flags = decode_throttled(parse_throttled(_line(sample)))
    assert len(flags) == 8
    assert {name for name, on in flags.items() if on} == true_flags


def test_throttled_garbage_is_refused() -> None:
    with pytest.raises(HealthSourceError):
        parse_throttled("error=1 error_msg=Command not registered")


def test_thermal_zones_of_a_recorded_jetson_tree() -> None:
    sample = SystemHealth(root=FIXTURES / "jetson-nano-root").sample()
    # zone 5 has no temp file: skipped, not guessed
    assert sample.temperatures_c == {
        "CPU-therm": 31.5,
        "GPU-therm": 30.0,
        "PLL-therm": 29.75,
        "PMIC-Die": 100.0,
        "thermal-fan-est": 30.9,
    }
    # the fixture tree has no /proc: those sources are reported, not invented
    assert {"cpu", "load", "memory"} <= set(sample.unavailable)
    assert sample.cpu_percent is None and sample.mem_total_mb is None


def test_thermal_zones_absent_are_reported() -> None:
    sample = SystemHealth(root=FIXTURES / "coral-root").sample()
    assert sample.temperatures_c == {}
    assert "thermal" in sample.unavailable


def test_throttling_read_from_sysfs_of_a_recorded_pi_tree() -> None:
    def no_command(argv: Sequence[str], timeout: float) -> str:
        raise AssertionError("sysfs is there: vcgencmd must not run")

    health = DeviceHealth(["vcgencmd_throttled"], root=FIXTURES / "rpi4-root", run=no_command)
    sample = health.sample()
    assert sample.unavailable == {}
    assert sample.throttling["under_voltage_now"] and not sample.throttling["freq_capped_now"]


def test_edgetpu_temperature_and_absence() -> None:
    found = DeviceHealth(["edgetpu_temperature"], root=FIXTURES / "coral-root").sample()
    assert found.temperatures_c == {"edgetpu:apex_0": 48.3}
    assert [(a.name, a.kind, a.temperature_c) for a in found.accelerators] == [
        ("apex_0", "tpu", 48.3)
    ]
    missing = DeviceHealth(["edgetpu_temperature"], root=FIXTURES / "rpi4-root").sample()
    assert "no Edge TPU" in missing.unavailable["edgetpu_temperature"]


def test_absent_tools_are_reported_with_their_reason(tmp_path: Path) -> None:
    # this host has neither tegrastats nor vcgencmd nor a Pi sysfs: every one says so
    sample = DeviceHealth(["tegrastats", "vcgencmd_throttled", "nvml"], root=tmp_path).sample()
    assert "tegrastats not found" in sample.unavailable["tegrastats"]
    assert "vcgencmd not found" in sample.unavailable["vcgencmd_throttled"]
    assert sample.unavailable["nvml"]  # not installed, or no NVIDIA driver on this host
    assert sample.throttling == {} and sample.accelerators == []


def test_a_hanging_source_times_out_and_is_not_restarted_while_stuck(tmp_path: Path) -> None:
    release = threading.Event()
    calls = []

    def hang(argv: Sequence[str], timeout: float) -> str:
        calls.append(argv[0])
        release.wait(10)
        return "throttled=0x0"

    health = DeviceHealth(["vcgencmd_throttled"], root=tmp_path, timeout=0.2, run=hang)
    try:
        first = health.sample()
        assert "timed out" in first.unavailable["vcgencmd_throttled"]
        second = health.sample()
        assert "still running" in second.unavailable["vcgencmd_throttled"]
        assert calls == ["vcgencmd"]
    finally:
        release.set()
        health.close()


def test_tegrastats_streaming_line_is_read_within_its_timeout() -> None:
    # `first_line` stops a tool that keeps printing once it has its line
    line = first_line(["sh", "-c", "while :; do echo RAM 1/2MB; sleep 0.05; done"], 5.0)
    assert line.strip() == "RAM 1/2MB"
    with pytest.raises(HealthSourceError, match="printed nothing"):
        first_line(["sleep", "5"], 0.2)


def test_device_sample_merges_into_a_decodable_health_message(tmp_path: Path) -> None:
    def tegra(argv: Sequence[str], timeout: float) -> str:
        return _line("tegrastats-jetpack5-orin.txt")

    device = DeviceHealth(
        ["tegrastats", "edgetpu_temperature"], root=FIXTURES / "coral-root", stream_line=tegra
    ).sample()
    base = Health(device="cam-01", temperatures_c={"x86_pkg_temp": 50.0}, unavailable={"a": "b"})
    merged = decode(encode(with_device_health(base, device)), Health)
    assert merged.power_w["VDD_GPU_SOC"] == 2.4
    assert {a.name for a in merged.accelerators} == {"gr3d", "emc", "apex_0"}
    gpu = next(a for a in merged.accelerators if a.name == "gr3d")
    assert (gpu.load_percent, gpu.clock_mhz, gpu.temperature_c, gpu.power_w) == (
        45.0,
        611.0,
        42.5,
        2.4,
    )
    assert merged.cpu_cores_percent == (3.0, 2.0, 0.0, 1.0)
    assert merged.temperatures_c["x86_pkg_temp"] == 50.0
    assert merged.temperatures_c["tegra:tj"] == 43.968
    assert merged.unavailable == {"a": "b"}


def test_old_health_payload_without_new_fields_still_decodes() -> None:
    old = b'{"v":"1.0","type":"health","id":"abcdef012345","ts":1.0,"device":"cam-01",'
    old += b'"cameras":[{"camera":"door","connected":true}]}'
    health = decode(old, Health)
    assert health.accelerators == () and health.throttling == {}
    assert health.cameras[0].reconnects == 0 and health.cameras[0].since is None
