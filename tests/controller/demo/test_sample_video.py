"""The sample video: written, readable, and its recorded faces are where the faces are."""

import cv2
import numpy as np
import pytest

from agent.detect.detector import Detector
from agent.detect.nms import iou_matrix
from agent.runtimes.litert import LiteRTRuntime
from controller.demo.sample_video import (
    ASTRONAUT_FACE_BOX_PX,
    DEFAULT_SCENES,
    Placement,
    astronaut_frame,
    load_photo,
    render_placement,
    write_sample_video,
)
from ota.manifest import InputSpec, PostprocessSpec


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_sample_video(tmp_path_factory.mktemp("video") / "sample.avi")


@pytest.fixture(scope="module")
def decoded_frames(video):
    capture = cv2.VideoCapture(str(video.path))
    frames = []
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            frames.append(frame)
    finally:
        capture.release()
    return frames


@pytest.fixture(scope="module")
def face_detector(blazeface_model):
    runtime = LiteRTRuntime(num_threads=1)
    runtime.load(blazeface_model)
    yield Detector(
        runtime,
        InputSpec(width=128, height=128, color="rgb", mean=(127.5,) * 3, std=(127.5,) * 3),
        PostprocessSpec(kind="blazeface", score_threshold=0.5, iou_threshold=0.3),
        ["face"],
    )
    runtime.close()


def test_video_is_mjpg_and_opencv_reads_every_frame(video, decoded_frames):
    assert video.frame_count == len(DEFAULT_SCENES) * 20  # 10 fps x 2 s per scene
    capture = cv2.VideoCapture(str(video.path))
    try:
        assert capture.isOpened()
        assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == video.frame_count
        assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(10.0)
        fourcc = int(capture.get(cv2.CAP_PROP_FOURCC))
        assert fourcc.to_bytes(4, "little") == b"MJPG"
    finally:
        capture.release()
    assert len(decoded_frames) == video.frame_count
    assert all(frame.shape == (480, 640, 3) for frame in decoded_frames)


def test_scenes_cover_the_video_in_order(video):
    assert [s.name for s in video.scenes] == [
        "astronaut",
        "coffee",
        "rocket",
        "astronaut-close",
    ]
    assert video.scenes[0].start == 0
    for before, after in zip(video.scenes, video.scenes[1:], strict=False):
        assert before.stop == after.start
    assert video.scenes[-1].stop == video.frame_count
    assert video.scene_at(0).name == "astronaut"
    assert video.scene_at(25).name == "coffee"
    assert video.scene_at(video.frame_count - 1).name == "astronaut-close"
    with pytest.raises(IndexError):
        video.scene_at(video.frame_count)
    assert [len(s.faces) for s in video.scenes] == [1, 0, 0, 1]


def test_decoded_frames_match_the_rendered_scenes(video, decoded_frames):
    for scene in video.scenes:
        rendered, _ = render_placement(scene.placement, video.size)
        for index in (scene.start, scene.stop - 1):
            error = np.abs(decoded_frames[index].astype(int) - rendered.astype(int)).mean()
            assert error < 4.0, (scene.name, index, error)


def test_timing_and_size_are_configurable(tmp_path):
    video = write_sample_video(
        tmp_path / "short.avi", fps=5, seconds_per_image=0.4, size=(320, 240)
    )
    assert video.frame_count == 2 * len(DEFAULT_SCENES)
    capture = cv2.VideoCapture(str(video.path))
    ok, frame = capture.read()
    capture.release()
    assert ok and frame.shape == (240, 320, 3)


def test_other_containers_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"\.avi"):
        write_sample_video(tmp_path / "clip.mp4")


def test_astronaut_box_maps_onto_the_face_pixels_of_the_photo():
    # the frame's pixels inside the mapped box are the photo's face, resized
    photo = load_photo("astronaut")
    x1, y1, x2, y2 = (int(v) for v in ASTRONAUT_FACE_BOX_PX)
    face = photo[y1:y2, x1:x2].astype(np.float32)
    for placement in (Placement("astronaut"), DEFAULT_SCENES[-1][1]):
        frame, (box,) = render_placement(placement, (640, 480))
        fx1, fy1, fx2, fy2 = (
            round(box[0] * 640),
            round(box[1] * 480),
            round(box[2] * 640),
            round(box[3] * 480),
        )
        crop = cv2.resize(frame[fy1:fy2, fx1:fx2], (x2 - x1, y2 - y1)).astype(np.float32)
        correlation = np.corrcoef(crop.ravel(), face.ravel())[0, 1]
        assert correlation > 0.95, placement
        assert np.abs(crop - face).mean() < 10.0, placement


def test_astronaut_frame_is_the_first_scene(video, decoded_frames):
    frame, box = astronaut_frame(video.size)
    assert video.scenes[0].faces == (box,)
    rendered, _ = render_placement(video.scenes[0].placement, video.size)
    np.testing.assert_array_equal(frame, rendered)
    # the 512x512 photo is scaled to 480x480 and centred in the 640x480 frame
    scale, left = 480 / 512, 80
    expected = (
        (left + ASTRONAUT_FACE_BOX_PX[0] * scale) / 640,
        ASTRONAUT_FACE_BOX_PX[1] * scale / 480,
        (left + ASTRONAUT_FACE_BOX_PX[2] * scale) / 640,
        ASTRONAUT_FACE_BOX_PX[3] * scale / 480,
    )
    np.testing.assert_allclose(box, expected)


def test_detector_agrees_with_the_recorded_faces_in_every_scene(
    video, decoded_frames, face_detector
):
    for scene in video.scenes:
        frame = decoded_frames[(scene.start + scene.stop) // 2]
        detections = face_detector.detect(frame)
        assert len(detections) == len(scene.faces), scene.name
        if scene.faces:
            ious = iou_matrix(np.array([d.box for d in detections]), np.array(scene.faces))
            assert ious.max(axis=0).min() >= 0.75, (scene.name, ious)
            assert min(d.score for d in detections) >= 0.7, scene.name
