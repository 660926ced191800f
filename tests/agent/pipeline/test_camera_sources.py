"""Source kinds, profile templates, MJPEG over HTTP, looping files and unopenable sources."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.pipeline.settings import CameraSettings
from agent.pipeline.sources import (
    CameraCounters,
    CameraSourceError,
    FrameGrabber,
    open_capture,
    profile_camera_template,
    resolve_cameras,
    resolve_profile_source,
    source_kind,
)
from controller.demo.sample_video import write_sample_video

ORANGE_BGR = (0, 128, 255)


@pytest.mark.parametrize(
    ("source", "kind"),
    [
        ("0", "v4l2"),
        ("/dev/video2", "v4l2"),
        ("rtsp://10.0.0.5:554/stream1", "rtsp"),
        ("RTSPS://cam/x", "rtsp"),
        ("http://cam.local/video.mjpg", "http"),
        ("videotestsrc ! videoconvert ! appsink", "gstreamer"),
        ("/var/clips/door.avi", "file"),
        ("profile", "profile"),
    ],
)
def test_source_kind(source: str, kind: str) -> None:
    assert source_kind(source) == kind


def test_profile_source_fills_the_jetson_csi_template() -> None:
    template = profile_camera_template("jetson-nano")
    assert template is not None
    camera = CameraSettings(source="profile", fps=15, template={"sensor_id": 1, "width": 1920})
    resolved = resolve_profile_source(camera, template)
    assert resolved.source.startswith("nvarguscamerasrc sensor-id=1 !")
    assert "width=1920, height=720, framerate=15/1" in resolved.source
    assert source_kind(resolved.source) == "gstreamer"


def test_profile_source_without_a_value_for_a_placeholder_is_refused() -> None:
    camera = CameraSettings(source="profile")
    with pytest.raises(CameraSourceError) as caught:
        resolve_profile_source(camera, "{url}")
    assert caught.value.reason == "bad_template_values"
    # the agent keeps such a camera unresolved; its grabber then says why it does not open
    [kept] = resolve_cameras([camera], "cloud-gpu")
    assert kept.source == "profile"
    with pytest.raises(CameraSourceError):
        open_capture(kept)


def test_gstreamer_pipeline_needs_the_backend() -> None:
    pipeline = "videotestsrc num-buffers=5 ! videoconvert ! appsink"
    if cv2.videoio_registry.hasBackend(cv2.CAP_GSTREAMER):
        open_capture(pipeline).release()
    else:
        with pytest.raises(CameraSourceError) as caught:
            open_capture(pipeline)
        assert caught.value.reason == "no_gstreamer"


def test_missing_file_is_reported_down_with_its_reason(tmp_path: Path) -> None:
    camera = CameraSettings(source=str(tmp_path / "nope.avi"), reconnect_max_s=0.2)
    counters = CameraCounters()
    grabber = FrameGrabber(camera, counters)
    grabber.start()
    try:
        assert counters.wait_connected(False, timeout=5, min_failures=1)
        assert "does not exist" in counters.last_error
        assert counters.frames_in == 0
    finally:
        grabber.stop()


def test_video_file_loops_past_its_end(tmp_path: Path) -> None:
    video = write_sample_video(tmp_path / "c.avi", fps=10, seconds_per_image=0.2, size=(160, 120))
    camera = CameraSettings(source=str(video.path), realtime=False, loop=True)
    counters = CameraCounters()
    grabber = FrameGrabber(camera, counters)
    grabber.start()
    try:
        seq = 0
        for _ in range(200):  # bounded: each wait returns on a new frame
            seq = grabber.latest(seq, timeout=5)[0]
            if seq > 2 * video.frame_count:
                break
        assert seq > 2 * video.frame_count
        assert counters.reconnects == 0, "a loop is not a reconnect"
    finally:
        grabber.stop()


def _mjpeg_handler(jpeg: bytes, stop: threading.Event) -> type[BaseHTTPRequestHandler]:
    """A camera's MJPEG endpoint: multipart JPEG parts at 25 fps until `stop` is set."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            self.end_headers()
            part = b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n"
            try:
                while not stop.wait(0.04):
                    self.wfile.write(part % len(jpeg) + jpeg + b"\r\n")
            except OSError:
                return

        def log_message(self, format: str, *args: object) -> None:
            return

    return Handler


@pytest.fixture
def mjpeg_server() -> Iterator[tuple[ThreadingHTTPServer, str, threading.Event]]:
    frame = np.zeros((120, 160, 3), np.uint8)
    frame[:] = ORANGE_BGR
    stop = threading.Event()
    handler = _mjpeg_handler(cv2.imencode(".jpg", frame)[1].tobytes(), stop)
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, f"http://127.0.0.1:{server.server_address[1]}/video.mjpg", stop
    finally:
        stop.set()
        server.shutdown()
        server.server_close()


def test_http_mjpeg_frames_are_read_and_a_stopped_server_is_reported(
    mjpeg_server: tuple[ThreadingHTTPServer, str, threading.Event],
) -> None:
    server, url, stop = mjpeg_server
    camera = CameraSettings(id="mjpeg", source=url, read_timeout_s=2, reconnect_max_s=0.5)
    counters = CameraCounters()
    grabber = FrameGrabber(camera, counters)
    grabber.start()
    try:
        seq, frame = 0, None
        for _ in range(3):
            seq, frame, _ = grabber.latest(seq, timeout=5)
        assert frame is not None and frame.shape == (120, 160, 3)
        assert np.abs(frame[60, 80].astype(int) - ORANGE_BGR).max() <= 8
        assert counters.connected

        stop.set()  # the camera goes away: its stream ends and it refuses new connections
        server.shutdown()
        server.server_close()
        assert counters.wait_connected(False, timeout=10, min_failures=1)
    finally:
        grabber.stop()
