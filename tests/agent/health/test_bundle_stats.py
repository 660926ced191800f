"""Per-bundle statistics for rollout gates: fps, inference p95, detection rate, mean score."""

from __future__ import annotations

import cv2
from skimage import data

from agent.deploy.loader import load_model
from agent.deploy.probation import CountingDetector
from agent.health.bundle_stats import BundleStatsWindow, percentile, with_bundle_stats
from agent.runtimes.base import probe_runtime
from agent.selection import choose_runtime
from ota.install import SlotStore
from protocol.codec import decode_agent_message, encode
from protocol.messages import Health
from protocol.topics import Topics


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_window_reports_rates_percentile_and_mean_score():
    clock = Clock()
    stats = BundleStatsWindow("ab" * 32, clock=clock)
    for i in range(100):
        stats.record(float(i + 1), [0.5, 0.9] if i % 2 == 0 else [])
    clock.now += 10.0
    snap = stats.snapshot()
    assert snap.frames == 100 and snap.window_s == 10.0 and snap.fps == 10.0
    assert snap.infer_ms_p95 == 95.0
    assert snap.det_rate == 1.0
    assert snap.mean_score is not None and abs(snap.mean_score - 0.7) < 1e-9


def test_an_idle_bundle_reports_zeros_and_no_percentile():
    snap = BundleStatsWindow("cd" * 32).snapshot()
    assert (snap.frames, snap.fps, snap.det_rate) == (0, 0.0, 0.0)
    assert snap.infer_ms_p95 is None and snap.mean_score is None


def test_percentile_by_nearest_rank():
    assert percentile([1.0], 0.95) == 1.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0


def test_a_real_model_on_a_face_fills_the_health_message_field(tmp_path, trust, build_blazeface):
    built = build_blazeface(version=1)
    installed = SlotStore(tmp_path / "store").install(built.path, trust, built.manifest.created)
    model = load_model(
        installed, choose_runtime(installed.manifest, [probe_runtime("litert")], ("litert",))
    )
    try:
        detector = CountingDetector(model.detector, BundleStatsWindow(installed.digest))
        frame = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
        for _ in range(5):
            detector.detect(frame)
    finally:
        model.close()
    assert detector.stats is not None
    stats = detector.stats.snapshot()
    assert stats.frames == 5 and stats.fps > 0
    assert stats.infer_ms_p95 is not None and stats.infer_ms_p95 > 0
    assert stats.det_rate >= 1.0  # the astronaut's face, on every frame
    assert stats.mean_score is not None and 0.5 < stats.mean_score <= 1.0
    message = with_bundle_stats(Health(device="cam-01"), stats)
    _, decoded = decode_agent_message(Topics(), Topics().health("cam-01"), encode(message))
    assert isinstance(decoded, Health) and decoded.bundle_stats == stats
