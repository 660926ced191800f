"""Camera sources: open a V4L2 device, file, RTSP or MJPEG URL, or GStreamer pipeline and keep
only the newest frame, on a thread of its own, reopening with capped backoff when the source
dies or freezes."""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from agent.pipeline.settings import CameraSettings

if TYPE_CHECKING:  # OpenCV and numpy load with the first camera, not with the agent
    import cv2
    import numpy as np

log = logging.getLogger(__name__)

SourceKind = Literal["v4l2", "rtsp", "http", "gstreamer", "file", "profile"]
PROFILE_SOURCE = "profile"
# OpenCV reads its FFmpeg options from this variable when a capture opens; it is process-wide,
# so opens that set it are serialised.
_FFMPEG_OPTIONS_ENV = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
_FFMPEG_ENV_LOCK = threading.Lock()


class CameraSourceError(Exception):
    """A camera source cannot be opened; `reason` is a short machine-readable word."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class CameraCounters:
    frames_in: int = 0
    frames_processed: int = 0
    frames_skipped: int = 0
    inference_ms_total: float = 0.0
    latency_ms_total: float = 0.0
    connected: bool = False
    reconnects: int = 0
    failures: int = 0  # opens that failed and connections that dropped or froze
    last_error: str = ""
    since: float = field(default_factory=time.time)  # wall time `connected` last changed
    _changed: threading.Condition = field(default_factory=threading.Condition, repr=False)
    # (time, frames_in, frames_processed) at the last rate sample
    _mark: tuple[float, int, int] = field(default=(0.0, 0, 0))

    def rates(self) -> tuple[float, float]:
        """Frames in and processed per second since the previous call."""
        now = time.monotonic()
        then, fin, fproc = self._mark
        self._mark = (now, self.frames_in, self.frames_processed)
        if then == 0.0 or now <= then:
            return 0.0, 0.0
        return (self.frames_in - fin) / (now - then), (self.frames_processed - fproc) / (now - then)

    def set_connected(self, connected: bool, error: str = "") -> None:
        with self._changed:
            if connected != self.connected:
                self.since = time.time()
            self.connected = connected
            if not connected:
                self.failures += 1
            if error:
                self.last_error = error[:256]
            self._changed.notify_all()

    def wait_connected(
        self, connected: bool, timeout: float, min_reconnects: int = 0, min_failures: int = 0
    ) -> bool:
        """Block until the source is (dis)connected with at least that many reconnects and
        failures; False on timeout."""
        with self._changed:
            return self._changed.wait_for(
                lambda: (
                    self.connected == connected
                    and self.reconnects >= min_reconnects
                    and self.failures >= min_failures
                ),
                timeout,
            )


def source_kind(source: str) -> SourceKind:
    """What kind of source a camera's `source` string names."""
    text = source.strip()
    lower = text.lower()
    if text == PROFILE_SOURCE:
        return "profile"
    if text.isdigit() or lower.startswith("/dev/video"):
        return "v4l2"
    if lower.startswith(("rtsp://", "rtsps://")):
        return "rtsp"
    if lower.startswith(("http://", "https://")):
        return "http"
    if "!" in text:
        return "gstreamer"
    return "file"


def resolve_profile_source(camera: CameraSettings, template: str | None) -> CameraSettings:
    """The camera with `source: profile` replaced by the profile's filled-in template.

    Raises CameraSourceError when there is no template or a placeholder has no value.
    """
    if source_kind(camera.source) != "profile":
        return camera
    if not template:
        raise CameraSourceError("no_profile_template", "the device profile has no camera template")
    values: dict[str, object] = {
        "sensor_id": 0,
        "index": 0,
        "width": 1280,
        "height": 720,
        "fps": int(camera.fps or 30),
    }
    values.update(camera.template)
    try:
        source = template.format(**values)
    except (KeyError, IndexError, ValueError) as exc:
        raise CameraSourceError(
            "bad_template_values", f"profile camera template needs {exc} in camera.template"
        ) from exc
    return camera.model_copy(update={"source": " ".join(source.split())})


def profile_camera_template(profile: str) -> str | None:
    """The named device profile's camera source template, or None when it cannot be had."""
    from device_profiles.errors import ProfileError
    from device_profiles.loader import get_profile

    try:
        return get_profile(profile).camera.source_template
    except ProfileError:
        return None


def resolve_cameras(cameras: list[CameraSettings], profile: str) -> list[CameraSettings]:
    """Every `source: profile` camera filled from the profile; one that cannot be stays as is
    and its grabber reports why it does not open."""
    template = profile_camera_template(profile)
    resolved = []
    for camera in cameras:
        try:
            resolved.append(resolve_profile_source(camera, template))
        except CameraSourceError as exc:
            log.error(
                "event=camera_unresolved camera=%s reason=%s detail=%r",
                camera.id,
                exc.reason,
                str(exc),
            )
            resolved.append(camera)
    return resolved


def open_capture(camera: CameraSettings | str) -> cv2.VideoCapture:
    """Open one source with the backend and timeouts its kind needs; raises CameraSourceError."""
    import cv2

    if isinstance(camera, str):
        camera = CameraSettings(source=camera)
    source = camera.source.strip()
    kind = source_kind(source)
    timeouts = [
        cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
        int(camera.open_timeout_s * 1000),
        cv2.CAP_PROP_READ_TIMEOUT_MSEC,
        int(camera.read_timeout_s * 1000),
    ]
    if kind == "profile":
        raise CameraSourceError("no_profile_template", "source 'profile' was not resolved")
    if kind == "v4l2":
        device: int | str = int(source) if source.isdigit() else source
        cap = cv2.VideoCapture(device, cv2.CAP_V4L2)
    elif kind == "gstreamer":
        if not cv2.videoio_registry.hasBackend(cv2.CAP_GSTREAMER):
            raise CameraSourceError(
                "no_gstreamer", "this OpenCV build has no GStreamer backend for a pipeline source"
            )
        cap = cv2.VideoCapture(source, cv2.CAP_GSTREAMER)
    elif kind in ("rtsp", "http"):
        options = f"rtsp_transport;{camera.rtsp_transport}" if kind == "rtsp" else ""
        with _FFMPEG_ENV_LOCK:
            before = os.environ.get(_FFMPEG_OPTIONS_ENV)
            os.environ[_FFMPEG_OPTIONS_ENV] = options
            try:
                cap = cv2.VideoCapture(source, cv2.CAP_FFMPEG, timeouts)
            finally:
                if before is None:
                    os.environ.pop(_FFMPEG_OPTIONS_ENV, None)
                else:
                    os.environ[_FFMPEG_OPTIONS_ENV] = before
    else:
        if not os.path.exists(source):
            raise CameraSourceError("no_such_file", f"video file {source!r} does not exist")
        cap = cv2.VideoCapture(source)
    if not cap.isOpened():
        cap.release()
        raise CameraSourceError("open_failed", f"cannot open {kind} source {source!r}")
    return cap


class FrameGrabber:
    """Reads one source on its own thread and keeps only the newest frame."""

    def __init__(self, camera: CameraSettings, counters: CameraCounters) -> None:
        self.camera = camera
        self.counters = counters
        self._cond = threading.Condition()
        self._frame: np.ndarray | None = None
        self._frame_ts = 0.0
        self._seq = 0
        self._opened_once = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"grab-{camera.id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        # a network read returns within read_timeout_s, so the join is bounded by it
        self._thread.join(timeout=self.camera.read_timeout_s + 5)

    def latest(self, after_seq: int, timeout: float) -> tuple[int, np.ndarray | None, float]:
        """Wait for a frame newer than `after_seq`; returns (seq, frame, capture time)."""
        with self._cond:
            self._cond.wait_for(lambda: self._seq > after_seq or self._stop.is_set(), timeout)
            return self._seq, self._frame, self._frame_ts

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                cap = open_capture(self.camera)
            except CameraSourceError as exc:
                self._source_down(str(exc), backoff)
                backoff = min(backoff * 2, self.camera.reconnect_max_s)
                continue
            if self._opened_once:
                self.counters.reconnects += 1
            self._opened_once = True
            self.counters.set_connected(True)
            log.info(
                "event=source_up camera=%s reconnects=%d", self.camera.id, self.counters.reconnects
            )
            frames_before = self.counters.frames_in
            try:
                why = self._read_until_failure(cap)
            finally:
                cap.release()
            # only a connection that delivered frames resets the backoff: a source that opens
            # and fails at once must not be hammered every half second
            if self.counters.frames_in > frames_before:
                backoff = 0.5
            if not self._stop.is_set():
                self._source_down(why, backoff)
                backoff = min(backoff * 2, self.camera.reconnect_max_s)

    def _read_until_failure(self, cap: cv2.VideoCapture) -> str:
        """Read frames until the source ends, fails or freezes; returns why it stopped."""
        import cv2

        period = self._period(cap)
        next_due = time.monotonic()
        while not self._stop.is_set():
            started = time.monotonic()
            ok, frame = cap.read()
            looping = self.camera.loop and source_kind(self.camera.source) == "file"
            if not ok and looping and cap.set(cv2.CAP_PROP_POS_FRAMES, 0):
                ok, frame = cap.read()
            now = time.monotonic()
            # the watchdog: FFmpeg's read timeout interrupts a frozen stream, and OpenCV may
            # still hand back a stale decoded frame then; either way the source is reopened
            if now - started > self.camera.read_timeout_s:
                return f"no frame for {now - started:.1f}s (frozen source)"
            if not ok:
                return "source ended or failed"
            with self._cond:
                self._frame = frame
                self._frame_ts = time.time()
                self._seq += 1
                self.counters.frames_in += 1
                self._cond.notify_all()
            if period:
                next_due = max(next_due + period, now - period)
                self._stop.wait(max(0.0, next_due - time.monotonic()))
        return "stopped"

    def _period(self, cap: cv2.VideoCapture) -> float:
        import cv2

        if not self.camera.realtime or source_kind(self.camera.source) != "file":
            return 0.0  # live sources pace themselves
        fps = self.camera.fps or cap.get(cv2.CAP_PROP_FPS) or 10.0
        return 1.0 / fps if fps > 0 else 0.1

    def _source_down(self, why: str, backoff: float) -> None:
        self.counters.set_connected(False, why)
        log.warning(
            "event=source_down camera=%s reason=%r retry_s=%.1f", self.camera.id, why, backoff
        )
        self._stop.wait(backoff)
