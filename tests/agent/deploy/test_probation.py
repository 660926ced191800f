"""Probation judgement: a pure function of the model's health and the time."""

from __future__ import annotations

import numpy as np
import pytest

from agent.deploy.probation import CountingDetector, ModelHealth, Probation
from agent.link.events import DeploymentRef
from ota.install import InstalledBundle

DIGEST = "ab" * 32


def _trial(deadline=10.0):
    installed = InstalledBundle(slot_dir=None, digest=DIGEST, manifest=None)  # type: ignore[arg-type]
    return Probation(installed, DeploymentRef(DIGEST), attempt=1, deadline=deadline)


def _health(frames=5, errors=0, cameras=1, digest=DIGEST):
    return ModelHealth(digest=digest, frames=frames, errors=errors, cameras=cameras)


@pytest.mark.parametrize(
    ("health", "now", "verdict", "reason"),
    [
        (_health(), 5.0, "pending", None),
        (_health(), 10.0, "passed", None),
        (None, 5.0, "failed", "not_active"),
        (_health(digest="cd" * 32), 5.0, "failed", "not_active"),
        (_health(errors=1), 5.0, "failed", "inference_errors"),
        (_health(frames=0), 10.0, "failed", "no_frames"),
        (_health(frames=0, cameras=0), 10.0, "passed", None),
    ],
)
def test_judgement(health, now, verdict, reason):
    judged = _trial().judge(health, now)
    assert (judged.verdict, judged.reason) == (verdict, reason)


class Flaky:
    def __init__(self):
        self.calls = 0

    def detect(self, frame):
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("bad tensor")
        return ["face"]


def test_counting_detector_counts_frames_and_errors_and_reraises():
    counted = CountingDetector(Flaky())
    frame = np.zeros((4, 4, 3), np.uint8)
    assert counted.detect(frame) == ["face"]
    with pytest.raises(RuntimeError):
        counted.detect(frame)
    counted.detect(frame)
    assert (counted.frames, counted.errors, counted.last_error) == (2, 1, "bad tensor")
