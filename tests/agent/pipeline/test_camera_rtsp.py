"""RTSP sources against a real ffmpeg publisher: frames read, a dead or frozen source reopened."""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from agent.pipeline.settings import CameraSettings
from agent.pipeline.sources import CameraCounters, FrameGrabber
from controller.demo.sample_video import write_sample_video
from tests.agent.rtsp_relay import RtspRelay, start_publisher

# CI runs scripts/system-packages.sh first, which installs ffmpeg: missing it is a failure.
FFMPEG = shutil.which("ffmpeg")


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("rtsp")
    return write_sample_video(
        folder / "clip.avi", fps=10, seconds_per_image=0.5, size=(320, 240)
    ).path


@pytest.fixture
def relay() -> Iterator[RtspRelay]:
    assert FFMPEG, "ffmpeg is required (scripts/system-packages.sh installs it)"
    server = RtspRelay()
    try:
        yield server
    finally:
        server.close()


def _publish(clip: Path, relay: RtspRelay, nth: int) -> subprocess.Popen[bytes]:
    proc = start_publisher(clip, relay.url)
    assert relay.wait_published(nth, timeout=15), "ffmpeg never published"
    return proc


def _frames(grabber: FrameGrabber, count: int, timeout: float) -> list[np.ndarray]:
    """`count` distinct newest frames, each awaited at most `timeout` seconds."""
    seq, frames = grabber.latest(0, timeout=0)[0], []
    for _ in range(count):
        new_seq, frame, _ = grabber.latest(seq, timeout)
        assert new_seq > seq and frame is not None, f"no new frame within {timeout}s"
        seq = new_seq
        frames.append(frame)
    return frames


def _grabber(url: str) -> tuple[FrameGrabber, CameraCounters]:
    camera = CameraSettings(
        id="rtsp-cam", source=url, open_timeout_s=3, read_timeout_s=1.5, reconnect_max_s=1
    )
    counters = CameraCounters()
    return FrameGrabber(camera, counters), counters


def test_rtsp_frames_are_read_and_a_killed_source_reconnects(clip: Path, relay: RtspRelay) -> None:
    publisher = _publish(clip, relay, 1)
    grabber, counters = _grabber(relay.url)
    grabber.start()
    try:
        frames = _frames(grabber, 5, timeout=10)
        assert frames[-1].shape == (240, 320, 3)
        assert counters.connected and counters.reconnects == 0

        publisher.kill()
        publisher.wait()
        assert counters.wait_connected(False, timeout=10, min_failures=1), (
            "dead source not reported down"
        )
        assert counters.last_error

        publisher = _publish(clip, relay, 2)
        assert counters.wait_connected(True, timeout=15, min_reconnects=1)
        before = counters.frames_in
        _frames(grabber, 3, timeout=10)
        assert counters.frames_in >= before + 3
    finally:
        grabber.stop()
        publisher.kill()
        publisher.wait()


def test_frozen_rtsp_source_is_detected_by_the_read_watchdog(clip: Path, relay: RtspRelay) -> None:
    publisher = _publish(clip, relay, 1)
    grabber, counters = _grabber(relay.url)
    grabber.start()
    try:
        _frames(grabber, 3, timeout=10)
        # the publisher stops sending but keeps its connection: the stream is frozen, not closed
        publisher.send_signal(signal.SIGSTOP)
        assert counters.wait_connected(False, timeout=10, min_failures=1), (
            "frozen source not detected"
        )
        assert "frozen" in counters.last_error, counters.last_error
    finally:
        grabber.stop()
        publisher.kill()
        publisher.wait()
