"""Probation of a newly installed bundle: it must run healthy for a window before it is committed.

Healthy means: the pipeline runs this model, no inference raised, and, when the agent has
cameras, the model processed at least one frame. The judgement is a pure function of a health
sample and the time, so the deployer's control thread asks on each tick and nothing waits.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from agent.health.bundle_stats import BundleStatsWindow
from agent.link.events import DeploymentRef
from agent.pipeline.workers import FrameDetector
from ota.install import InstalledBundle
from protocol.events import InstallReason

if TYPE_CHECKING:  # frames are numpy arrays, but numpy loads with the first model
    import numpy as np


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
    """Wraps a detector and counts the frames it processed and the inferences that raised;
    with `stats`, also records each frame's inference time and detection scores."""

    def __init__(self, inner: FrameDetector, stats: BundleStatsWindow | None = None) -> None:
        self.inner = inner
        self.stats = stats
        self.frames = 0
        self.errors = 0
        self.last_error = ""

    def detect(self, frame_bgr: np.ndarray) -> list[Any]:
        """The wrapped detector's result. Raises what the wrapped detector raises."""
        started = time.perf_counter()
        try:
            found = self.inner.detect(frame_bgr)
        except Exception as exc:
            # counted here, re-raised so the pipeline still logs and skips the frame
            self.errors += 1
            self.last_error = str(exc)[:500]
            raise
        self.frames += 1
        if self.stats is not None:
            self.stats.record(_infer_ms(self.inner, started), _scores(found))
        return found


def _infer_ms(inner: FrameDetector, started: float) -> float:
    """The model's own inference time when the detector measures it, else the whole call's."""
    times = getattr(inner, "last_times", None)
    infer_ms = getattr(times, "infer_ms", None)
    if isinstance(infer_ms, float) and infer_ms > 0:
        return infer_ms
    return (time.perf_counter() - started) * 1000.0


def _scores(found: list[Any]) -> list[float]:
    return [float(s) for s in (getattr(d, "score", None) for d in found) if s is not None]


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
    # later deployments of the same bundle that arrived during the window: told the outcome too
    followers: list[DeploymentRef] = field(default_factory=list)

    def follow(self, ref: DeploymentRef) -> None:
        """Report this trial's outcome to `ref` as well (a repeated deploy of the bundle)."""
        if ref != self.ref and ref not in self.followers:
            self.followers.append(ref)

    @property
    def refs(self) -> list[DeploymentRef]:
        """Every deployment this trial's outcome belongs to."""
        return [self.ref, *self.followers]

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
