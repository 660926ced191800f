"""What the simulated fleet does: how often each stage fails, how links and bundles behave.

Every rate is a probability per device and deployment, drawn from the device's own seeded
random stream, so a run with the same seed fails the same devices the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

Rate = Annotated[float, Field(ge=0.0, le=1.0)]
Positive = Annotated[float, Field(gt=0.0)]


class BundleBehaviour(BaseModel):
    """How the model of one bundle runs on the simulated devices, relative to the baseline."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fps_factor: Positive = Field(1.0, description="processed fps times this (0.3: much slower)")
    infer_ms_factor: Positive = Field(1.0, description="inference time times this")
    det_rate_factor: Annotated[float, Field(ge=0.0)] = Field(
        1.0, description="detections per frame times this"
    )
    score_shift: Annotated[float, Field(ge=-1.0, le=1.0)] = Field(
        0.0, description="added to the mean detection score"
    )
    fails_probation: bool = Field(False, description="every device fails this bundle's probation")


class SimKnobs(BaseModel):
    """The simulated fleet's behaviour (`edgefleet sim` flags map onto these fields)."""

    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    fail_download: Rate = Field(0.0, description="transfer given up half way, as `stalled`")
    fail_verify: Rate = Field(0.0, description="bundle refused after download, as tampered")
    fail_install: Rate = Field(0.0, description="slot install fails (disk error)")
    fail_probation: Rate = Field(0.0, description="probation fails (inference errors)")
    crash_in_probation: Rate = Field(
        0.0, description="the agent dies during probation and restarts (counts an attempt)"
    )
    offline_mid_download: Rate = Field(
        0.0, description="the device drops off the broker half way through a download"
    )
    offline_s: Positive = Field(5.0, description="how long such a device stays away")
    loss: Rate = Field(0.0, description="chunk loss on the link")
    link_mb_s: Annotated[float, Field(ge=0.0)] = Field(
        0.0, description="per-device read speed, MB/s (0: as fast as the process reads)"
    )
    slow_fraction: Rate = Field(0.0, description="share of devices on slow links")
    slow_factor: Annotated[float, Field(gt=0.0, le=1.0)] = Field(
        0.1, description="a slow device reads at this share of link_mb_s"
    )
    probation_s: Annotated[float, Field(ge=0.0)] = 2.0
    max_probation_attempts: Annotated[int, Field(ge=1)] = 2
    restart_s: Positive = Field(1.0, description="how long a crashed agent takes to restart")
    health_interval_s: Positive = 5.0
    chunk_request_timeout_s: Positive = 2.0
    chunk_request_attempts: Annotated[int, Field(ge=1)] = 8
    fps: Positive = Field(15.0, description="baseline processed fps")
    infer_ms: Positive = Field(8.0, description="baseline inference ms (p95)")
    det_rate: Annotated[float, Field(ge=0.0)] = Field(0.8, description="detections per frame")
    mean_score: Annotated[float, Field(ge=0.0, le=1.0)] = 0.82
    bundles: dict[str, BundleBehaviour] = Field(
        default_factory=dict,
        description="behaviour per bundle, keyed by `name@version`, `name` or digest prefix",
    )
    profile: str = "generic-x86_64"
    runtime: str = "litert"
    tags: tuple[str, ...] = Field((), description="tags every device declares in its state")

    def behaviour(self, name: str, version: int, digest: str) -> BundleBehaviour:
        """The behaviour declared for this bundle, most specific key first."""
        for key in (digest, f"{name}@{version}", name):
            if key in self.bundles:
                return self.bundles[key]
        for key, found in self.bundles.items():
            if len(key) >= 6 and digest.startswith(key):
                return found
        return BundleBehaviour()


@dataclass
class SimCounters:
    """What the simulated fleet did, for benchmarks and tests."""

    deploys: int = 0
    chunks: int = 0
    chunk_bytes: int = 0
    dropped_chunks: int = 0
    chunk_requests: int = 0
    verified: int = 0
    running: int = 0
    failed: int = 0
    rolled_back: int = 0
    crashes: int = 0
    offline: int = 0
    verifier_runs: int = 0
    failures: dict[str, int] = field(default_factory=dict)

    def failure(self, reason: str) -> None:
        self.failures[reason] = self.failures.get(reason, 0) + 1
