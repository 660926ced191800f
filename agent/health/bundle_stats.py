"""Per-bundle statistics: how fast and how confidently the active bundle has run since it was
activated, for the rollout gates that compare a new bundle with the previous one.

The pipeline's camera threads record each frame; the health timer reads a snapshot. Counts and
sums cover the whole time since activation (the probation window, then running); the inference
time percentile covers the most recent frames only, so a long run stays cheap.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable

from protocol.messages import BundleStats, Health

RECENT_FRAMES = 1024
"""How many recent inference times the percentile is taken over."""


class BundleStatsWindow:
    """Accumulates one bundle's frames, inference times and detection scores."""

    def __init__(
        self,
        digest: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        recent: int = RECENT_FRAMES,
    ) -> None:
        self.digest = digest
        self._clock = clock
        self._started = clock()
        self._lock = threading.Lock()
        self._frames = 0
        self._detections = 0
        self._score_sum = 0.0
        self._infer_ms: deque[float] = deque(maxlen=recent)

    def record(self, infer_ms: float, scores: Iterable[float]) -> None:
        """One processed frame: its inference time and the scores of what it detected."""
        kept = [s for s in scores if math.isfinite(s)]
        with self._lock:
            self._frames += 1
            self._detections += len(kept)
            self._score_sum += sum(kept)
            if math.isfinite(infer_ms) and infer_ms >= 0:
                self._infer_ms.append(infer_ms)

    def snapshot(self) -> BundleStats:
        """The statistics so far, as the health message carries them."""
        with self._lock:
            frames, detections, score_sum = self._frames, self._detections, self._score_sum
            times = sorted(self._infer_ms)
        window = max(0.0, self._clock() - self._started)
        return BundleStats(
            digest=self.digest,
            frames=frames,
            window_s=round(window, 3),
            fps=round(frames / window, 3) if window > 0 else 0.0,
            infer_ms_p95=round(percentile(times, 0.95), 3) if times else None,
            det_rate=round(detections / frames, 4) if frames else 0.0,
            mean_score=min(1.0, max(0.0, score_sum / detections)) if detections else None,
        )


def percentile(ordered: list[float], q: float) -> float:
    """The `q` quantile (0..1) of an ascending, non-empty list, by the nearest rank."""
    rank = max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))
    return ordered[rank]


def with_bundle_stats(message: Health, stats: BundleStats | None) -> Health:
    """`message` carrying the active bundle's statistics (unchanged when there are none)."""
    if stats is None:
        return message
    return message.model_copy(update={"bundle_stats": stats})
