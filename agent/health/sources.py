"""Device-specific health sources: Jetson `tegrastats`, Raspberry Pi throttling flags, Edge TPU
temperature and NVML. Parsers are pure; readers take an injectable root and command runner.

Every source is optional and read with a timeout; one that cannot be read is named in
`unavailable` with the reason, never filled with a guess.
"""

from __future__ import annotations

import importlib
import re
import selectors
import subprocess
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol.messages import AcceleratorHealth, Health

KNOWN_SOURCES = ("tegrastats", "vcgencmd_throttled", "edgetpu_temperature", "nvml")
# sensors that are present in the table but not fitted report this (Jetson Orin CV/GPU zones)
_ABSENT_SENSOR_C = -200.0

THROTTLE_BITS = {
    0: "under_voltage_now",
    1: "freq_capped_now",
    2: "throttled_now",
    3: "soft_temp_limit_now",
    16: "under_voltage_since_boot",
    17: "freq_capped_since_boot",
    18: "throttled_since_boot",
    19: "soft_temp_limit_since_boot",
}


class HealthSourceError(Exception):
    """A health source exists but its output could not be read or understood."""


@dataclass
class TegrastatsSample:
    ram_used_mb: float
    ram_total_mb: float
    cpu_percent: list[float | None]  # per core; None while a core is offline
    cpu_freq_mhz: list[float | None]
    gpu_percent: float | None = None
    gpu_freq_mhz: float | None = None
    emc_percent: float | None = None
    emc_freq_mhz: float | None = None
    temperatures_c: dict[str, float] = field(default_factory=dict)
    power_mw: dict[str, tuple[float, float]] = field(default_factory=dict)  # (now, average)


_RAM = re.compile(r"\bRAM (\d+)/(\d+)MB")
_CPU = re.compile(r"\bCPU \[([^\]]*)\]")
_CORE = re.compile(r"^(\d+)%(?:@(\d+))?$")
_EMC = re.compile(r"\bEMC_FREQ (\d+)%(?:@(\d+))?")
_GR3D = re.compile(r"\bGR3D_FREQ (\d+)%(?:@\[?(\d+))?")
_TEMP = re.compile(r"\b([A-Za-z][A-Za-z0-9_]*)@(-?\d+(?:\.\d+)?)C(?=\s|$)")
_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?(?=\s|$)")


def parse_tegrastats(line: str) -> TegrastatsSample:
    """One `tegrastats` line (JetPack 4.x and 5.x formats); raises HealthSourceError."""
    ram = _RAM.search(line)
    if ram is None:
        raise HealthSourceError(f"no RAM field in tegrastats line {line[:80]!r}")
    sample = TegrastatsSample(float(ram[1]), float(ram[2]), [], [])
    cpu = _CPU.search(line)
    if cpu is not None:
        for item in cpu[1].split(","):
            core = _CORE.match(item.strip())
            sample.cpu_percent.append(float(core[1]) if core else None)
            sample.cpu_freq_mhz.append(float(core[2]) if core and core[2] else None)
    if emc := _EMC.search(line):
        sample.emc_percent = float(emc[1])
        sample.emc_freq_mhz = float(emc[2]) if emc[2] else None
    if gr3d := _GR3D.search(line):
        sample.gpu_percent = float(gr3d[1])
        sample.gpu_freq_mhz = float(gr3d[2]) if gr3d[2] else None
    for name, value in _TEMP.findall(line):
        if float(value) > _ABSENT_SENSOR_C:
            sample.temperatures_c[name.lower()] = float(value)
    for name, now, average in _RAIL.findall(line):
        if name not in ("RAM", "SWAP", "IRAM"):
            sample.power_mw[name] = (float(now), float(average))
    return sample


def decode_throttled(value: int) -> dict[str, bool]:
    """The Raspberry Pi firmware's throttling word as named flags."""
    return {name: bool(value >> bit & 1) for bit, name in THROTTLE_BITS.items()}


def parse_throttled(text: str) -> int:
    """`throttled=0x50005` (vcgencmd) or `50005` (sysfs) to an int; raises HealthSourceError."""
    raw = text.strip().rpartition("=")[2].strip()
    try:
        return int(raw, 16)
    except ValueError:
        raise HealthSourceError(f"not a throttling word: {text.strip()[:60]!r}") from None


Runner = Callable[[Sequence[str], float], str]


def run_command(argv: Sequence[str], timeout: float) -> str:
    """Run a command and return its stdout; raises HealthSourceError on absence or failure."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise HealthSourceError(f"{argv[0]} not found") from None
    except (subprocess.TimeoutExpired, OSError) as exc:
        raise HealthSourceError(f"{argv[0]}: {exc}") from None
    if done.returncode != 0:
        raise HealthSourceError(f"{argv[0]} exited {done.returncode}: {done.stderr.strip()[:120]}")
    return done.stdout


def first_line(argv: Sequence[str], timeout: float) -> str:
    """The first line a streaming tool (tegrastats) prints, then stop it; raises
    HealthSourceError on absence, failure or timeout."""
    try:
        proc = subprocess.Popen(
            list(argv), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
    except (FileNotFoundError, PermissionError):
        raise HealthSourceError(f"{argv[0]} not found") from None
    with proc:  # closes the pipe and reaps the tool, whichever way this ends
        try:
            stdout = proc.stdout
            if stdout is None:  # never with stdout=PIPE; checked rather than assumed
                raise HealthSourceError(f"{argv[0]} gave no output pipe")
            with selectors.DefaultSelector() as selector:
                selector.register(stdout, selectors.EVENT_READ)
                if not selector.select(timeout):
                    raise HealthSourceError(f"{argv[0]} printed nothing within {timeout:.1f}s")
                line = stdout.readline()
        finally:
            proc.kill()
    if not line.strip():
        raise HealthSourceError(f"{argv[0]} exited without output")
    return line


def profile_health_sources(profile: str) -> list[str]:
    """The device-specific health sources a device profile names ([] for an unknown one)."""
    from device_profiles.errors import ProfileError
    from device_profiles.loader import get_profile

    try:
        return [s for s in get_profile(profile).health if s in KNOWN_SOURCES]
    except ProfileError:
        return []


@dataclass
class DeviceSample:
    """What the device-specific sources added to one health message."""

    temperatures_c: dict[str, float] = field(default_factory=dict)
    throttling: dict[str, bool] = field(default_factory=dict)
    accelerators: list[AcceleratorHealth] = field(default_factory=list)
    power_w: dict[str, float] = field(default_factory=dict)
    cpu_cores_percent: list[float] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)


class DeviceHealth:
    """Reads the named sources (a device profile's `health` list), each within `timeout`."""

    def __init__(
        self,
        sources: Sequence[str],
        root: Path = Path("/"),
        timeout: float = 2.0,
        run: Runner = run_command,
        stream_line: Runner = first_line,
    ) -> None:
        self.sources = [s for s in sources if s in KNOWN_SOURCES]
        self.root = root
        self.timeout = timeout
        self._run = run
        self._stream_line = stream_line
        self._pool = ThreadPoolExecutor(
            max_workers=max(1, len(self.sources)), thread_name_prefix="health"
        )
        self._pending: dict[str, Future[DeviceSample]] = {}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def sample(self) -> DeviceSample:
        """Read every source in parallel; a source that hangs is reported, not waited for."""
        out = DeviceSample()
        readers: dict[str, Callable[[], DeviceSample]] = {
            "tegrastats": self._tegrastats,
            "vcgencmd_throttled": self._throttled,
            "edgetpu_temperature": self._edgetpu,
            "nvml": self._nvml,
        }
        started: dict[str, Future[DeviceSample]] = {}
        for name in self.sources:
            previous = self._pending.get(name)
            if previous is not None and not previous.done():
                # still stuck from an earlier sample: starting another would pile threads up
                out.unavailable[name] = "previous read still running (timed out)"
                continue
            # each reader fills a sample of its own, so a late one cannot touch this message
            started[name] = self._pending[name] = self._pool.submit(readers[name])
        deadline = time.monotonic() + self.timeout
        for name, future in started.items():
            try:
                part = future.result(timeout=max(0.0, deadline - time.monotonic()))
            except FutureTimeout:
                out.unavailable[name] = f"timed out after {self.timeout:.1f}s"
            except HealthSourceError as exc:
                out.unavailable[name] = str(exc)[:256]
            except Exception as exc:  # a broken source must not break the health message
                out.unavailable[name] = f"{type(exc).__name__}: {exc}"[:256]
            else:
                out.temperatures_c.update(part.temperatures_c)
                out.throttling.update(part.throttling)
                out.accelerators.extend(part.accelerators)
                out.power_w.update(part.power_w)
                out.cpu_cores_percent.extend(part.cpu_cores_percent)
        return out

    def _tegrastats(self) -> DeviceSample:
        out = DeviceSample()
        stats = parse_tegrastats(
            self._stream_line(["tegrastats", "--interval", "500"], self.timeout)
        )
        out.cpu_cores_percent = [c for c in stats.cpu_percent if c is not None]
        out.temperatures_c.update({f"tegra:{k}": v for k, v in stats.temperatures_c.items()})
        out.power_w.update({k: now / 1000.0 for k, (now, _) in stats.power_mw.items()})
        gpu_power = next((v for k, v in stats.power_mw.items() if "GPU" in k), None)
        out.accelerators.append(
            AcceleratorHealth(
                name="gr3d",
                kind="gpu",
                load_percent=stats.gpu_percent,
                clock_mhz=stats.gpu_freq_mhz,
                temperature_c=stats.temperatures_c.get("gpu"),
                power_w=gpu_power[0] / 1000.0 if gpu_power else None,
            )
        )
        if stats.emc_percent is not None:
            out.accelerators.append(
                AcceleratorHealth(
                    name="emc",
                    kind="emc",
                    load_percent=stats.emc_percent,
                    clock_mhz=stats.emc_freq_mhz,
                )
            )
        return out

    def _throttled(self) -> DeviceSample:
        out = DeviceSample()
        # newer Raspberry Pi kernels expose the firmware word in sysfs; older ones need vcgencmd
        sysfs = self.root / "sys/devices/platform/soc/soc:firmware/get_throttled"
        try:
            text = sysfs.read_text()
        except OSError:
            text = self._run(["vcgencmd", "get_throttled"], self.timeout)
        out.throttling = decode_throttled(parse_throttled(text))
        return out

    def _edgetpu(self) -> DeviceSample:
        out = DeviceSample()
        nodes = sorted((self.root / "sys/class/apex").glob("apex_*"))
        if not nodes:
            raise HealthSourceError("no Edge TPU under /sys/class/apex")
        for node in nodes:
            try:
                millideg = int((node / "temp").read_text().strip())
            except (OSError, ValueError) as exc:
                raise HealthSourceError(f"{node.name}/temp unreadable: {exc}") from None
            out.temperatures_c[f"edgetpu:{node.name}"] = millideg / 1000.0
            out.accelerators.append(
                AcceleratorHealth(name=node.name, kind="tpu", temperature_c=millideg / 1000.0)
            )
        return out

    def _nvml(self) -> DeviceSample:
        out = DeviceSample()
        try:  # optional: the nvidia-ml-py package
            pynvml: Any = importlib.import_module("pynvml")
        except ImportError:
            raise HealthSourceError("pynvml not installed (pip install nvidia-ml-py)") from None
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise HealthSourceError(f"NVML unavailable: {exc}") from None
        try:
            for index in range(pynvml.nvmlDeviceGetCount()):
                out.accelerators.append(_nvml_device(pynvml, index))
        finally:
            pynvml.nvmlShutdown()
        return out


def _nvml_device(pynvml: Any, index: int) -> AcceleratorHealth:
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    util = pynvml.nvmlDeviceGetUtilizationRates(handle)
    memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
    temp = pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU)
    try:
        power: float | None = pynvml.nvmlDeviceGetPowerUsage(handle) / 1000.0
    except pynvml.NVMLError:  # not every board reports power
        power = None
    return AcceleratorHealth(
        name=f"nvml-{index}",
        kind="gpu",
        load_percent=float(util.gpu),
        clock_mhz=float(pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM)),
        memory_used_mb=memory.used / 1048576.0,
        memory_total_mb=memory.total / 1048576.0,
        temperature_c=float(temp),
        power_w=power,
    )


def with_device_health(health: Health, device: DeviceSample) -> Health:
    """The health message with the device sample merged in (system values win on a clash)."""
    temperatures = {**device.temperatures_c, **health.temperatures_c}
    return health.model_copy(
        update={
            "temperatures_c": dict(list(temperatures.items())[:64]),
            "throttling": device.throttling,
            "accelerators": tuple(device.accelerators[:16]),
            "power_w": {k: max(0.0, v) for k, v in list(device.power_w.items())[:32]},
            "cpu_cores_percent": tuple(max(0.0, c) for c in device.cpu_cores_percent[:256]),
            "unavailable": dict(list({**health.unavailable, **device.unavailable}.items())[:64]),
        }
    )
