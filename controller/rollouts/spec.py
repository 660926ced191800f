"""What an operator asks for: selectors, and a rollout's waves, rate, thresholds, timeouts and
gates, as strict pydantic models stored as JSON beside the rollout."""

from __future__ import annotations

import math
import re
from enum import Enum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_AMOUNT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(%?)\s*$")


class Amount(BaseModel):
    """A number of devices, either a count or a percentage of some total."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    value: Annotated[float, Field(ge=0)]
    percent: bool = False

    @classmethod
    def parse(cls, text: str | int | float) -> Amount:
        """`"5"` is five devices, `"10%"` ten per cent; raises ValueError otherwise."""
        if isinstance(text, int | float):
            return cls(value=float(text))
        match = _AMOUNT.match(text)
        if match is None:
            raise ValueError(f"not a count or a percentage: {text!r}")
        value, pct = float(match.group(1)), bool(match.group(2))
        if pct and value > 100:
            raise ValueError(f"a percentage over 100: {text!r}")
        return cls(value=value, percent=pct)

    def of(self, total: int) -> int:
        """The count this amount means out of `total` (percentages round up, at most total)."""
        if self.percent:
            return min(total, math.ceil(total * self.value / 100 - 1e-9))
        return min(total, int(self.value))

    def __str__(self) -> str:
        number = f"{self.value:g}"
        return f"{number}%" if self.percent else number


def _amount(value: object) -> object:
    if isinstance(value, str | int | float):
        return Amount.parse(value)
    return value


class Selector(BaseModel):
    """Which devices: every given field must match (tags: the device has all of them)."""

    model_config = ConfigDict(extra="forbid")

    devices: list[str] = Field(default_factory=list, description="these device ids")
    group: str | None = Field(None, description="the members of this saved group")
    profile: str | None = None
    runtime: str | None = Field(None, description="a runtime the device can run")
    tags: list[str] = Field(default_factory=list)
    agent_version: str | None = None
    bundle: str | None = Field(
        None, description="devices running this bundle (name@version or digest prefix)"
    )
    online: bool | None = None


class GateName(str, Enum):
    """Metrics a gate compares between the new bundle and the previous one on the same devices."""

    FPS = "fps"
    INFERENCE_P95 = "inference_p95"
    DETECTION_RATE = "detection_rate"
    SCORE_DRIFT = "score_drift"


class GateSpec(BaseModel):
    """`fps` and `detection_rate`: new/old ratio at least `min`; `inference_p95`: ratio at most
    `max`; `score_drift`: |new mean score − old mean score| at most `max`."""

    model_config = ConfigDict(extra="forbid")

    name: GateName
    min: float | None = Field(None, ge=0)
    max: float | None = Field(None, ge=0)
    window_s: float = Field(
        120.0,
        gt=0,
        description="probation window compared with as long before; longer than the ingest's "
        "health_history_s, so each window holds a stored health sample",
    )

    @model_validator(mode="after")
    def _bound(self) -> GateSpec:
        if self.min is None and self.max is None:
            raise ValueError(f"gate {self.name.value} needs min or max")
        return self


class StageTimeouts(BaseModel):
    model_config = ConfigDict(extra="forbid")

    offered_s: float = Field(300.0, gt=0, description="until the agent accepts the offer")
    downloading_s: float = Field(1800.0, gt=0)
    installing_s: float = Field(600.0, gt=0)
    probation_s: float = Field(900.0, gt=0)


class RolloutSpec(BaseModel):
    """How a rollout moves: waves, pace, thresholds, timeouts, gates and what a halt does."""

    model_config = ConfigDict(extra="forbid")

    waves: Annotated[list[Amount], Field(min_length=1, max_length=32)] = Field(
        default_factory=lambda: [Amount(value=1), Amount(value=100, percent=True)],
        description="cumulative share of the selected devices each wave reaches; the first is "
        "the canary; the last is raised to 100%",
    )
    rate_per_min: float = Field(60.0, gt=0, le=1_000_000, description="devices offered per minute")
    growth_factor: float = Field(1.0, ge=1, le=100, description="rate multiplier ...")
    growth_every: int = Field(0, ge=0, description="... after every this many successes; 0: never")
    max_rate_per_min: float = Field(100_000.0, gt=0)
    jitter: float = Field(0.0, ge=0, lt=1, description="random spread of offer spacing, 0..1")
    max_in_flight: int = Field(
        0,
        ge=0,
        le=1_000_000,
        description="most devices offered and not yet finished (downloading, installing, on "
        "probation) at once; the rest wait their turn; 0: no limit. The broker holds at most "
        "its per-client queue for each device reading chunks, so this bounds the rollout's "
        "share of broker memory fleet-wide",
    )
    success_threshold: Amount = Field(
        Amount(value=100, percent=True), description="successes a wave needs to pass"
    )
    failure_threshold: Amount = Field(
        Amount(value=1), description="failures in a wave that halt the rollout"
    )
    min_finished: int = Field(1, ge=1, description="finished devices before failures can trip")
    timeouts: StageTimeouts = Field(default_factory=StageTimeouts)
    gates: list[GateSpec] = Field(default_factory=list)
    on_failure: Literal["keep", "revert"] = "keep"
    approval: bool = Field(False, description="wait for an operator's approval between waves")

    _parse_waves = field_validator("waves", mode="before")(
        classmethod(lambda _cls, v: [_amount(x) for x in v] if isinstance(v, list) else v)
    )
    _parse_amounts = field_validator("success_threshold", "failure_threshold", mode="before")(
        classmethod(lambda _cls, v: _amount(v))
    )

    def wave_sizes(self, total: int) -> list[int]:
        """How many devices each wave adds, out of `total`; every device is in some wave."""
        sizes: list[int] = []
        reached = 0
        for i, amount in enumerate(self.waves):
            cumulative = total if i == len(self.waves) - 1 else max(reached, amount.of(total))
            sizes.append(cumulative - reached)
            reached = cumulative
        return sizes
