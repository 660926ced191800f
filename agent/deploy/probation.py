"""Probation of a newly installed bundle: it must run healthy for a window before it is committed.

Healthy means: the pipeline runs this model, no inference raised, and, when the agent has
cameras, the model processed at least one frame. The judgement is a pure function of a health
sample and the time, so the deployer's control thread asks on each tick and nothing waits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from agent.link.events import DeploymentRef
from agent.pipeline.workers import FrameDetector
from ota.install import InstalledBundle
from protocol.events import InstallReason


@dataclass(frozen=True)
class ModelHealth:
    """What the pipeline says about the model it runs now."""

    digest: str
    frames: int
    errors: int
    cameras: int
    last_error: str = ""


HealthSource = Callable[[], ModelHealth | None]


class CountingDetector:
    """Wraps a detector and counts the frames it processed and the inferences that raised."""

    def __init__(self, inner: FrameDetector) -> None:
        self.inner = inner
        self.frames = 0
        self.errors = 0
        self.last_error = ""

    def detect(self, frame_bgr: np.ndarray) -> list[Any]:
        """The wrapped detector's result. Raises what the wrapped detector raises."""
        try:
            found = self.inner.detect(frame_bgr)
        except Exception as exc:
            # counted here, re-raised so the pipeline still logs and skips the frame
            self.errors += 1
            self.last_error = str(exc)[:500]
            raise
        self.frames += 1
        return found


Verdict = Literal["pending", "passed", "failed"]


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    reason: InstallReason | None = None  # set when the verdict is "failed"
    detail: str = ""


@dataclass
class Probation:
    """One bundle on probation, and the deployment its reports belong to."""

    installed: InstalledBundle
    ref: DeploymentRef
    attempt: int
    deadline: float

    def judge(self, health: ModelHealth | None, now: float) -> Judgement:
        """Passed, failed (with a reason code) or still pending at monotonic time `now`."""
        if health is None or health.digest != self.installed.digest:
            return Judgement(
                "failed", InstallReason.NOT_ACTIVE, "the pipeline no longer runs this bundle"
            )
        if health.errors:
            return Judgement(
                "failed",
                InstallReason.INFERENCE_ERRORS,
                f"{health.errors} inference(s) raised; last: {health.last_error}",
            )
        if now < self.deadline:
            return Judgement("pending")
        if health.cameras and not health.frames:
            return Judgement(
                "failed",
                InstallReason.NO_FRAMES,
                "no frame was processed during the probation window",
            )
        return Judgement("passed", detail=f"{health.frames} frames, no errors")
