"""Health sampling from the Linux pseudo-filesystems; each source optional, absence reported.

The filesystem root is injectable so parsers are tested on recorded trees.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class SystemSample:
    cpu_percent: float | None = None
    load1: float | None = None
    mem_used_mb: float | None = None
    mem_total_mb: float | None = None
    disk_free_mb: float | None = None
    temperatures_c: dict[str, float] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)


def parse_proc_stat_cpu(text: str) -> tuple[int, int]:
    """(busy, total) jiffies from the aggregate `cpu` line of /proc/stat; raises ValueError."""
    for line in text.splitlines():
        if line.startswith("cpu "):
            values = [int(v) for v in line.split()[1:]]
            idle = values[3] + (values[4] if len(values) > 4 else 0)
            total = sum(values[:8])
            return total - idle, total
    raise ValueError("no aggregate cpu line")


def parse_meminfo(text: str) -> tuple[float, float]:
    """(used, total) in MB from /proc/meminfo; raises ValueError/KeyError."""
    fields: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts:
            fields[key] = int(parts[0])
    total = fields["MemTotal"]
    available = fields.get("MemAvailable", fields.get("MemFree", 0))
    return (total - available) / 1024.0, total / 1024.0


class SystemHealth:
    """Samples CPU, load, memory, disk and thermal zones under `root` (normally `/`)."""

    def __init__(self, root: Path = Path("/"), disk_path: Path = Path(".")) -> None:
        self.root = root
        self.disk_path = disk_path
        self._cpu_mark: tuple[int, int] | None = None

    def _read(self, rel: str) -> str:
        return (self.root / rel).read_text()

    def sample(self) -> SystemSample:
        out = SystemSample()
        try:
            busy, total = parse_proc_stat_cpu(self._read("proc/stat"))
            if self._cpu_mark and total > self._cpu_mark[1]:
                out.cpu_percent = (
                    100.0 * (busy - self._cpu_mark[0]) / (total - self._cpu_mark[1])
                ) * (os.cpu_count() or 1)
            self._cpu_mark = (busy, total)
        except (OSError, ValueError, IndexError) as exc:
            out.unavailable["cpu"] = str(exc)[:200]
        try:
            out.load1 = float(self._read("proc/loadavg").split()[0])
        except (OSError, ValueError, IndexError) as exc:
            out.unavailable["load"] = str(exc)[:200]
        try:
            out.mem_used_mb, out.mem_total_mb = parse_meminfo(self._read("proc/meminfo"))
        except (OSError, ValueError, KeyError) as exc:
            out.unavailable["memory"] = str(exc)[:200]
        try:
            out.disk_free_mb = shutil.disk_usage(self.disk_path).free / (1024.0 * 1024.0)
        except OSError as exc:
            out.unavailable["disk"] = str(exc)[:200]
        out.temperatures_c = self.thermal_zones(out.unavailable)
        return out

    def thermal_zones(self, unavailable: dict[str, str]) -> dict[str, float]:
        """Every readable thermal zone by its type, in °C."""
        zones = sorted((self.root / "sys/class/thermal").glob("thermal_zone*"))
        temps: dict[str, float] = {}
        for zone in zones:
            try:
                kind = (zone / "type").read_text().strip() or zone.name
                temps[kind if kind not in temps else f"{kind}-{zone.name}"] = (
                    int((zone / "temp").read_text().strip()) / 1000.0
                )
            except (OSError, ValueError):
                continue
        if not temps:
            unavailable["thermal"] = "no readable thermal zone"
        return temps


class Uptime:
    def __init__(self) -> None:
        self.started = time.monotonic()

    def seconds(self) -> float:
        return time.monotonic() - self.started
