"""Gates on speed and accuracy: the new bundle against the previous one on the same devices.

For each device that finished its update, the window before the offer (the previous bundle)
is compared with the window from the start of probation (the new bundle), each `window_s`
long. When the agent's health carries per-bundle statistics (`Health.bundle_stats`: fps,
inference ms p95, detections per frame, mean score since the bundle was activated) for the
right bundle in both windows, the newest of each window is used. Otherwise the figures come
from what the controller stores anyway: health samples (processed fps summed over cameras,
inference ms as the slowest camera's) and detection rows (per second, mean score).

The wave's figure is the mean over its devices; a gate with no device measured in both windows
once they have passed is a breach (`no_data`), since a rollout that asked for a gate must not
pass unmeasured.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from controller.db import DetectionRow, EventRow, HealthRow
from controller.rollouts.spec import GateName, GateSpec
from protocol.events import EventKind


@dataclass(frozen=True)
class GateSubject:
    """One device of the wave: when it was offered the bundle, and what it ran before."""

    device: str
    offered_at: float
    previous: str | None


@dataclass(frozen=True)
class GateVerdict:
    """`passed`, `waiting` (a window has not elapsed) or `breached`, with the numbers."""

    gate: GateName
    outcome: str
    numbers: dict[str, Any] = field(default_factory=dict)

    @property
    def reason(self) -> str:
        return f"gate:{self.gate.value}"


@dataclass(frozen=True)
class _Window:
    start: float
    end: float


def _probation_start(session: Session, subject: GateSubject, bundle: str) -> float | None:
    return session.scalar(
        select(func.min(EventRow.ts)).where(
            EventRow.device == subject.device,
            EventRow.bundle == bundle,
            EventRow.kind.in_((EventKind.PROBATION.value, EventKind.RUNNING.value)),
            EventRow.ts >= subject.offered_at - 1.0,
        )
    )


def _health(session: Session, device: str, window: _Window) -> list[dict[str, Any]]:
    return list(
        session.scalars(
            select(HealthRow.payload)
            .where(
                HealthRow.device == device, HealthRow.ts >= window.start, HealthRow.ts < window.end
            )
            .order_by(HealthRow.ts)
        )
    )


_STAT_FIELD = {
    GateName.FPS: "fps",
    GateName.INFERENCE_P95: "infer_ms_p95",
    GateName.DETECTION_RATE: "det_rate",
    GateName.SCORE_DRIFT: "mean_score",
}


def _bundle_stat(samples: list[dict[str, Any]], gate: GateName, digest: str | None) -> float | None:
    """The newest per-bundle statistic the agent reported for `digest`, if any."""
    for sample in reversed(samples):
        stats = sample.get("bundle_stats")
        if isinstance(stats, dict) and stats.get("digest") == digest:
            value = stats.get(_STAT_FIELD[gate])
            return float(value) if value is not None else None
    return None


def _fps(samples: list[dict[str, Any]]) -> float | None:
    if not samples:
        return None
    totals = [
        sum(float(c.get("fps_processed", 0.0)) for c in s.get("cameras", [])) for s in samples
    ]
    return sum(totals) / len(totals)


def _p95_inference(samples: list[dict[str, Any]]) -> float | None:
    values = sorted(
        max((float(c.get("inference_ms", 0.0)) for c in s.get("cameras", [])), default=0.0)
        for s in samples
    )
    if not values:
        return None
    return values[min(len(values) - 1, math.ceil(0.95 * len(values)) - 1)]


def _detections(session: Session, device: str, window: _Window) -> tuple[int, float | None]:
    count, mean = session.execute(
        select(func.count(), func.avg(DetectionRow.score)).where(
            DetectionRow.device == device,
            DetectionRow.ts >= window.start,
            DetectionRow.ts < window.end,
        )
    ).one()
    return int(count or 0), (float(mean) if mean is not None else None)


def _stored(
    session: Session, gate: GateName, device: str, window: _Window, samples: list[dict[str, Any]]
) -> float | None:
    if gate is GateName.FPS:
        return _fps(samples)
    if gate is GateName.INFERENCE_P95:
        return _p95_inference(samples)
    count, mean = _detections(session, device, window)
    if gate is GateName.DETECTION_RATE:
        # a device with no health in the window was not running: its rate is unknown, not 0
        return count / (window.end - window.start) if samples or count else None
    return mean


def _measure_pair(
    session: Session,
    gate: GateName,
    subject: GateSubject,
    before: _Window,
    after: _Window,
    bundle: str,
) -> tuple[float | None, float | None]:
    """The (old, new) figures of one device, both from the same source."""
    old_samples = _health(session, subject.device, before)
    new_samples = _health(session, subject.device, after)
    old = _bundle_stat(old_samples, gate, subject.previous)
    new = _bundle_stat(new_samples, gate, bundle)
    if old is not None and new is not None:
        return old, new
    return (
        _stored(session, gate, subject.device, before, old_samples),
        _stored(session, gate, subject.device, after, new_samples),
    )


def _compare(gate: GateName, old: float, new: float) -> float | None:
    if gate is GateName.SCORE_DRIFT:
        return abs(new - old)
    if old <= 0:
        return 1.0 if new <= 0 else None
    return new / old


def evaluate(
    session: Session,
    spec: GateSpec,
    bundle: str,
    subjects: Sequence[GateSubject],
    now: float,
) -> GateVerdict:
    """Judge one gate over the wave's finished devices; see the module docstring."""
    if not subjects:
        return GateVerdict(spec.name, "passed", {"devices": 0})
    values: list[float] = []
    olds: list[float] = []
    news: list[float] = []
    for subject in subjects:
        started = _probation_start(session, subject, bundle)
        if started is None:
            continue
        if now < started + spec.window_s:
            return GateVerdict(spec.name, "waiting", {"device": subject.device})
        before = _Window(subject.offered_at - spec.window_s, subject.offered_at)
        after = _Window(started, started + spec.window_s)
        old, new = _measure_pair(session, spec.name, subject, before, after, bundle)
        if old is None or new is None:
            continue
        value = _compare(spec.name, old, new)
        if value is None:
            continue
        values.append(value)
        olds.append(old)
        news.append(new)
    if not values:
        return GateVerdict(spec.name, "breached", {"devices": 0, "detail": "no_data"})
    figure = sum(values) / len(values)
    numbers: dict[str, Any] = {
        "devices": len(values),
        "value": round(figure, 4),
        "old": round(sum(olds) / len(olds), 4),
        "new": round(sum(news) / len(news), 4),
        "min": spec.min,
        "max": spec.max,
    }
    ok = (spec.min is None or figure >= spec.min) and (spec.max is None or figure <= spec.max)
    return GateVerdict(spec.name, "passed" if ok else "breached", numbers)
