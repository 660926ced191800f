"""Per-camera detection filters: labels, minimum score, minimum area, zones.

Zones are polygons in frame-normalised coordinates; an object counts when the bottom-centre
of its box (where it stands) lies inside any zone. No zones means the whole frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agent.pipeline.tracker import Observation

Point = tuple[Annotated[float, Field(ge=0, le=1)], Annotated[float, Field(ge=0, le=1)]]


class FilterSettings(BaseModel):
    """Which detections of a camera are worth tracking and reporting."""

    model_config = ConfigDict(extra="forbid")

    labels: list[str] | None = Field(None, description="labels to keep; none means every label")
    min_score: Annotated[float, Field(ge=0, le=1)] = Field(0.0, description="least score")
    min_area: Annotated[float, Field(ge=0, le=1)] = Field(
        0.0, description="least box area as a fraction of the frame"
    )
    zones: list[list[Point]] = Field(
        default_factory=list,
        description="polygons (normalised x, y points); an object counts when its box's "
        "bottom-centre lies in one",
    )

    @field_validator("zones")
    @classmethod
    def _polygons(cls, value: list[list[Point]]) -> list[list[Point]]:
        for zone in value:
            if len(zone) < 3:
                raise ValueError("a zone needs at least 3 points")
        return value


def inside(point: tuple[float, float], polygon: Sequence[tuple[float, float]]) -> bool:
    """Whether `point` lies inside `polygon` (even-odd ray casting; edges count as inside)."""
    x, y = point
    result = False
    n = len(polygon)
    for i in range(n):
        x1, y1 = polygon[i]
        x2, y2 = polygon[(i + 1) % n]
        if _on_segment(x, y, x1, y1, x2, y2):
            return True
        if (y1 > y) != (y2 > y):
            cross_x = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
            if x < cross_x:
                result = not result
    return result


def _on_segment(x: float, y: float, x1: float, y1: float, x2: float, y2: float) -> bool:
    cross = (x2 - x1) * (y - y1) - (y2 - y1) * (x - x1)
    if abs(cross) > 1e-12:
        return False
    return min(x1, x2) <= x <= max(x1, x2) and min(y1, y2) <= y <= max(y1, y2)


class DetectionFilter:
    """Applies one camera's FilterSettings to a frame's observations."""

    def __init__(self, settings: FilterSettings | None = None) -> None:
        self.settings = settings or FilterSettings()
        self._labels = set(self.settings.labels) if self.settings.labels is not None else None

    def keep(self, obs: Observation) -> bool:
        s = self.settings
        if self._labels is not None and obs.label not in self._labels:
            return False
        if obs.score < s.min_score:
            return False
        x1, y1, x2, y2 = obs.box
        if max(0.0, x2 - x1) * max(0.0, y2 - y1) < s.min_area:
            return False
        if s.zones:
            foot = ((x1 + x2) / 2.0, y2)
            return any(inside(foot, zone) for zone in s.zones)
        return True

    def apply(self, found: Sequence[Observation]) -> list[Observation]:
        return [o for o in found if self.keep(o)]
