"""Charts drawn on the server as SVG: a series becomes a path of numbers the template places
in an <svg>; every text around it (titles, axis labels) goes through the template's escaping."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

WIDTH = 600
HEIGHT = 120
PAD_LEFT = 44
PAD_BOTTOM = 18
PAD_TOP = 6


@dataclass(frozen=True)
class Chart:
    title: str
    unit: str
    path: str  # an SVG path of numbers only; empty when there is nothing to draw
    y_min: str
    y_max: str
    x_start: str
    x_end: str
    last: str
    width: int = WIDTH
    height: int = HEIGHT
    left: int = PAD_LEFT
    bottom: int = HEIGHT - PAD_BOTTOM
    top: int = PAD_TOP

    @property
    def empty(self) -> bool:
        return not self.path


def _clock(ts: float) -> str:
    return time.strftime("%H:%M", time.gmtime(ts))


def _fmt(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def line_chart(
    title: str, unit: str, series: Sequence[tuple[float, float | None]], *, floor: float = 0.0
) -> Chart:
    """A chart of (unix time, value) points; a None value breaks the line."""
    points = [(t, v) for t, v in series if v is not None]
    if not points:
        return Chart(title, unit, "", "", "", "", "", "")
    t0, t1 = series[0][0], series[-1][0]
    lo = min(floor, min(v for _, v in points))
    hi = max(v for _, v in points)
    if hi - lo < 1e-9:
        hi = lo + 1.0
    span = max(t1 - t0, 1e-9)
    plot_w = WIDTH - PAD_LEFT - 4
    plot_h = HEIGHT - PAD_BOTTOM - PAD_TOP
    parts: list[str] = []
    pen_up = True
    for t, v in series:
        if v is None:
            pen_up = True
            continue
        x = PAD_LEFT + (plot_w * (t - t0) / span if t1 > t0 else plot_w)
        y = PAD_TOP + plot_h * (1 - (v - lo) / (hi - lo))
        parts.append(f"{'M' if pen_up else 'L'}{x:.1f},{y:.1f}")
        pen_up = False
    return Chart(
        title=title,
        unit=unit,
        path=" ".join(parts),
        y_min=_fmt(lo),
        y_max=_fmt(hi),
        x_start=_clock(t0),
        x_end=_clock(t1),
        last=_fmt(points[-1][1]),
    )
