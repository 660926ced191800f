"""Frame → tensor, and model coordinates back to the frame."""

import itertools

import cv2
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.detect.preprocess import (
    PreprocessError,
    Preprocessor,
    input_shape,
    letterbox,
    plan_transform,
)
from ota.manifest import InputSpec

SPEC = InputSpec(width=128, height=128)  # rgb, float32, mean = std = 127.5, letterboxed


def solid_frame(width: int, height: int, bgr: tuple[int, int, int]) -> np.ndarray:
    frame = np.empty((height, width, 3), dtype=np.uint8)
    frame[...] = bgr
    return frame


def test_landscape_frame_is_letterboxed_with_neutral_padding_top_and_bottom():
    frame = solid_frame(640, 480, (10, 20, 30))

    tensor, transform = letterbox(frame, SPEC)

    assert tensor.shape == (1, 128, 128, 3)
    assert tensor.dtype == np.float32
    assert (transform.left, transform.top) == (0, 16)
    assert (transform.content_width, transform.content_height) == (128, 96)
    # padding is the mean, so it normalises to exactly zero
    assert np.all(tensor[0, :16] == 0.0)
    assert np.all(tensor[0, 112:] == 0.0)
    # content: BGR (10, 20, 30) becomes RGB (30, 20, 10), then (p - 127.5) / 127.5
    expected = (np.array([30, 20, 10], dtype=np.float32) - 127.5) / 127.5
    np.testing.assert_allclose(
        tensor[0, 16:112], np.broadcast_to(expected, (96, 128, 3)), atol=1e-6
    )


def test_portrait_frame_is_padded_left_and_right():
    _, transform = letterbox(solid_frame(300, 600, (0, 0, 0)), SPEC)
    assert (transform.left, transform.top) == (32, 0)
    assert (transform.content_width, transform.content_height) == (64, 128)


def test_bgr_models_keep_the_channel_order():
    spec = InputSpec(width=32, height=32, color="bgr", mean=(0, 0, 0), std=(1, 1, 1))
    tensor, _ = letterbox(solid_frame(64, 64, (10, 20, 30)), spec)
    np.testing.assert_array_equal(tensor[0, 5, 5], [10, 20, 30])


def test_nchw_layout_puts_channels_first():
    spec = InputSpec(width=48, height=32, layout="nchw", color="bgr", mean=(0, 0, 0), std=(1, 1, 1))
    tensor, _ = letterbox(solid_frame(96, 64, (10, 20, 30)), spec)
    assert tensor.shape == (1, 3, 32, 48) == input_shape(spec)
    assert [float(tensor[0, c, 10, 10]) for c in range(3)] == [10.0, 20.0, 30.0]


def test_per_channel_mean_and_std_apply_in_model_channel_order():
    spec = InputSpec(width=16, height=16, mean=(30, 20, 10), std=(1, 2, 5))
    tensor, _ = letterbox(solid_frame(16, 16, (20, 40, 60)), spec)  # RGB (60, 40, 20)
    np.testing.assert_allclose(tensor[0, 8, 8], [30.0, 10.0, 2.0])


def test_without_letterbox_the_frame_is_stretched_over_the_whole_input():
    spec = InputSpec(width=128, height=128, letterbox=False)
    frame = solid_frame(640, 480, (255, 255, 255))
    tensor, transform = letterbox(frame, spec)
    assert np.all(tensor == 1.0)
    boxes = np.array([[0.1, 0.2, 0.3, 0.4]])
    np.testing.assert_allclose(transform.boxes_to_frame(boxes), boxes)


def test_uint8_input_gets_raw_pixels_and_int8_is_shifted():
    frame = solid_frame(32, 32, (10, 20, 200))
    raw, _ = letterbox(frame, InputSpec(width=16, height=16, dtype="uint8"))
    assert raw.dtype == np.uint8
    np.testing.assert_array_equal(raw[0, 4, 4], [200, 20, 10])
    shifted, _ = letterbox(frame, InputSpec(width=16, height=16, dtype="int8"))
    assert shifted.dtype == np.int8
    np.testing.assert_array_equal(shifted[0, 4, 4], [72, -108, -118])


def test_quantised_input_uses_the_model_scale_and_zero_point():
    # the model wants [-1, 1] floats quantised with scale 1/128, zero point 0, as int8
    spec = InputSpec(width=16, height=16, dtype="int8", mean=(128,) * 3, std=(128,) * 3)
    frame = solid_frame(16, 16, (0, 128, 255))
    tensor, _ = letterbox(frame, spec, quantization=(1 / 128, 0))
    np.testing.assert_array_equal(tensor[0, 3, 3], [127, 0, -128])


def test_output_buffer_is_filled_in_place_and_must_fit():
    out = np.full((1, 128, 128, 3), 9.0, dtype=np.float32)
    tensor, _ = letterbox(solid_frame(640, 480, (0, 0, 0)), SPEC, out=out)
    assert tensor is out
    assert np.all(out <= 1.0)
    with pytest.raises(PreprocessError, match="output buffer"):
        letterbox(solid_frame(64, 64, (0, 0, 0)), SPEC, out=np.zeros((1, 64, 64, 3), np.float32))


@pytest.mark.parametrize(
    "frame",
    [
        np.zeros((10, 10), dtype=np.uint8),
        np.zeros((10, 10, 4), dtype=np.uint8),
        np.zeros((10, 10, 3), dtype=np.float32),
        np.zeros((0, 10, 3), dtype=np.uint8),
    ],
)
def test_frames_that_are_not_bgr_images_are_refused(frame):
    with pytest.raises(PreprocessError):
        letterbox(frame, SPEC)


def test_transform_points_at_where_the_pixels_really_went():
    # a white rectangle on black lands in the tensor where the transform says it does
    frame = np.zeros((480, 640, 3), dtype=np.uint8)
    frame[120:360, 160:480] = 255  # normalised (0.25, 0.25, 0.75, 0.75)
    spec = InputSpec(width=128, height=128, mean=(0, 0, 0), std=(255, 255, 255))

    tensor, transform = letterbox(frame, spec)

    bright = np.argwhere(tensor[0, :, :, 0] > 0.5)
    (y1, x1), (y2, x2) = bright.min(axis=0), bright.max(axis=0) + 1
    found = transform.boxes_to_frame(np.array([x1, y1, x2, y2]) / 128.0)
    np.testing.assert_allclose(found, [0.25, 0.25, 0.75, 0.75], atol=1 / 96)


def reference_tensor(
    frame: np.ndarray, spec: InputSpec, quantization: tuple[float, int] | None
) -> np.ndarray:
    """The documented formula, one plain step at a time on a float canvas."""
    t = plan_transform(frame.shape[1], frame.shape[0], spec)
    left, top, w, h = int(t.left), int(t.top), int(t.content_width), int(t.content_height)
    shrinking = w < frame.shape[1] or h < frame.shape[0]
    resized = cv2.resize(
        np.ascontiguousarray(frame),
        (w, h),
        interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR,
    )
    if spec.color == "rgb":
        resized = resized[..., ::-1]
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    canvas = np.empty((spec.height, spec.width, 3), dtype=np.float32)
    canvas[...] = mean
    canvas[top : top + h, left : left + w] = resized
    if spec.dtype == "float32":
        canvas = (canvas - mean) / std
    else:
        if quantization is not None:
            canvas = (canvas - mean) / (std * np.float32(quantization[0]))
            canvas += np.float32(quantization[1])
        elif spec.dtype == "int8":
            canvas -= np.float32(128.0)
        low, high = (0, 255) if spec.dtype == "uint8" else (-128, 127)
        canvas = np.clip(np.rint(canvas), low, high)
    if spec.layout == "nchw":
        canvas = canvas.transpose(2, 0, 1)
    return canvas[np.newaxis].astype(spec.dtype)


NORMALISATIONS = [((127.5,) * 3, (127.5,) * 3), ((0, 0, 0), (1, 1, 1)), ((10, 20, 30), (1, 2, 5))]


@pytest.mark.parametrize(
    ("layout", "color", "dtype", "quantization"),
    [
        (layout, color, dtype, quantization)
        for layout, color, dtype, quantization in itertools.product(
            ("nhwc", "nchw"), ("rgb", "bgr"), ("float32", "uint8", "int8"), (None, (0.02, -5))
        )
        if quantization is None or dtype != "float32"
    ],
)
def test_fast_path_gives_bit_for_bit_the_plain_formula(layout, color, dtype, quantization):
    rng = np.random.default_rng(7)
    camera = rng.integers(0, 256, (500, 700, 3), dtype=np.uint8)
    # a whole frame, a crop (as tiling hands over) and a frame whose aspect needs no padding
    frames = [camera[:480, :640], camera[13:313, 40:140], camera[:64, :96]]
    for (mean, std), letterboxed in itertools.product(NORMALISATIONS, (True, False)):
        spec = InputSpec(
            width=96, height=64, layout=layout, color=color, dtype=dtype,
            mean=mean, std=std, letterbox=letterboxed,
        )  # fmt: skip
        preprocess = Preprocessor(spec, quantization=quantization)
        # a reused buffer full of stale values must come out exactly as a fresh one
        out = np.full(input_shape(spec), 7, dtype=np.dtype(dtype))
        for frame in frames + frames:
            tensor, transform = preprocess(frame, out=out)
            assert tensor is out
            assert transform == plan_transform(frame.shape[1], frame.shape[0], spec)
            np.testing.assert_array_equal(tensor, reference_tensor(frame, spec, quantization))


def test_a_zero_quantisation_scale_means_not_quantised():
    spec = InputSpec(width=16, height=16, dtype="uint8")
    frame = solid_frame(16, 16, (10, 20, 200))
    plain, _ = letterbox(frame, spec)
    np.testing.assert_array_equal(letterbox(frame, spec, quantization=(0.0, 0))[0], plain)


sizes = st.integers(min_value=1, max_value=4000)
model_sizes = st.integers(min_value=8, max_value=1024)
unit = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


@given(
    frame_w=sizes,
    frame_h=sizes,
    model_w=model_sizes,
    model_h=model_sizes,
    letterboxed=st.booleans(),
    box=st.tuples(unit, unit, unit, unit),
)
def test_transform_round_trips_frame_coordinates(
    frame_w, frame_h, model_w, model_h, letterboxed, box
):
    spec = InputSpec(width=model_w, height=model_h, letterbox=letterboxed)
    transform = plan_transform(frame_w, frame_h, spec)
    frame_box = np.array(box)

    in_model = transform.boxes_from_frame(frame_box)
    back = transform.boxes_to_frame(in_model)

    np.testing.assert_allclose(back, frame_box, atol=1e-9)
    # the frame lies inside the model input, and a letterbox keeps its aspect ratio
    assert np.all((in_model >= -1e-12) & (in_model <= 1 + 1e-12))
    assert transform.left >= 0 and transform.left + transform.content_width <= model_w
    assert transform.top >= 0 and transform.top + transform.content_height <= model_h
    if letterboxed:
        assert transform.content_width == model_w or transform.content_height == model_h
        # each side is the frame's side times one common scale, to the nearest whole pixel
        scale = min(model_w / frame_w, model_h / frame_h)
        assert (
            abs(transform.content_width - frame_w * scale) <= 0.5 + 1e-9
            or transform.content_width == 1
        )
        assert (
            abs(transform.content_height - frame_h * scale) <= 0.5 + 1e-9
            or transform.content_height == 1
        )
