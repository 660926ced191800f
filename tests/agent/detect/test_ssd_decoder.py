"""The SSD decoder on hand-made TF Object Detection API and DetectionOutput tensors."""

import numpy as np
import pytest

from agent.detect.decoding import DecodeError, UnsupportedPostprocessError, build_decoder
from agent.detect.ssd import SSDDecoder, SSDParams
from ota.manifest import InputSpec, PostprocessSpec

ROWS = 5


def tf_outputs(rows: list[tuple[tuple[float, float, float, float], int, float]]):
    """TF OD API outputs in name order: boxes [y1, x1, y2, x2], classes, scores, count."""
    boxes = np.zeros((1, ROWS, 4), np.float32)
    classes = np.ones((1, ROWS), np.float32)  # padding rows say class 1, as the graph does
    scores = np.zeros((1, ROWS), np.float32)
    for i, (box, cls, score) in enumerate(rows):
        boxes[0, i], classes[0, i], scores[0, i] = box, cls, score
    return [boxes, classes, scores, np.array([len(rows)], np.float32)]


def test_boxes_are_turned_to_xyxy_and_ids_to_label_indices():
    decoder = SSDDecoder(score_threshold=0.5)
    out = decoder(tf_outputs([((0.1, 0.2, 0.5, 0.6), 1, 0.9), ((0.5, 0.5, 0.9, 0.7), 3, 0.7)]))

    np.testing.assert_allclose(out.boxes, [[0.2, 0.1, 0.6, 0.5], [0.5, 0.5, 0.7, 0.9]], atol=1e-6)
    np.testing.assert_allclose(out.scores, [0.9, 0.7], atol=1e-6)
    assert out.classes.tolist() == [0, 2]  # person, car with a label offset of 1


def test_rows_past_the_count_are_ignored_even_when_they_look_like_detections():
    outputs = tf_outputs([((0.1, 0.1, 0.4, 0.4), 1, 0.9)])
    outputs[0][0, 1] = (0.5, 0.5, 0.9, 0.9)
    outputs[2][0, 1] = 0.95
    assert len(SSDDecoder()(outputs)) == 1


def test_low_scores_background_and_unwanted_classes_are_dropped():
    rows = [
        ((0.1, 0.1, 0.4, 0.4), 1, 0.9),
        ((0.1, 0.5, 0.4, 0.9), 18, 0.95),  # dog: not kept
        ((0.5, 0.1, 0.9, 0.4), 3, 0.3),  # car below the threshold
        ((0.5, 0.5, 0.9, 0.9), 0, 0.99),  # background
    ]
    decoder = SSDDecoder(score_threshold=0.5, params=SSDParams(keep_classes=(1, 3)))
    out = decoder(tf_outputs(rows))
    assert out.classes.tolist() == [0]
    assert SSDDecoder(score_threshold=0.5)(tf_outputs(rows)).classes.tolist() == [17, 0]


def test_only_listed_classes_are_kept_whatever_id_the_model_emits():
    rows = [
        ((0.0, 0.0, 0.2, 0.2), 2, 0.9),  # between two kept ids
        ((0.0, 0.4, 0.2, 0.6), -1, 0.9),  # below every id
        ((0.4, 0.0, 0.6, 0.2), 90, 0.9),  # above every kept id
        ((0.4, 0.4, 0.6, 0.6), 3, 0.8),
        ((0.8, 0.8, 1.0, 1.0), 0, 0.7),
    ]
    params = SSDParams(label_offset=0, keep_classes=(3, 0))
    out = SSDDecoder(score_threshold=0.5, params=params)(tf_outputs(rows))
    assert out.classes.tolist() == [3, 0]


def test_overlaps_are_suppressed_within_a_class_only():
    rows = [
        ((0.1, 0.1, 0.5, 0.5), 1, 0.9),
        ((0.12, 0.1, 0.52, 0.5), 1, 0.8),  # the same person again
        ((0.12, 0.1, 0.52, 0.5), 2, 0.7),  # a bicycle on top of them stays
    ]
    out = SSDDecoder(score_threshold=0.5, iou_threshold=0.5)(tf_outputs(rows))
    assert out.classes.tolist() == [0, 1]
    np.testing.assert_allclose(out.scores, [0.9, 0.7], atol=1e-6)


def test_max_detections_caps_the_count_by_score():
    rows = [((0.1 * i, 0.0, 0.1 * i + 0.05, 0.1), 1, 0.6 + 0.05 * i) for i in range(5)]
    out = SSDDecoder(score_threshold=0.5, max_detections=2)(tf_outputs(rows))
    np.testing.assert_allclose(out.scores, [0.8, 0.75], atol=1e-6)


def test_opencv_detection_output_rows_are_read_as_well():
    rows = np.full((1, 1, 4, 7), -1.0, np.float32)
    rows[0, 0, 0] = (0, 1, 0.8, 0.1, 0.2, 0.5, 0.9)
    rows[0, 0, 1] = (0, 18, 0.9, 0.6, 0.2, 0.9, 0.5)
    out = SSDDecoder(params=SSDParams(keep_classes=(1,)))([rows])
    np.testing.assert_allclose(out.boxes, [[0.1, 0.2, 0.5, 0.9]], atol=1e-6)
    assert out.classes.tolist() == [0]


def test_an_empty_frame_decodes_to_nothing():
    assert len(SSDDecoder()(tf_outputs([]))) == 0


@pytest.mark.parametrize(
    "outputs",
    [
        [np.zeros((1, 5, 4)), np.zeros((1, 5))],
        [np.zeros((1, 5, 3)), np.zeros((1, 5)), np.zeros((1, 5)), np.zeros(1)],
        [np.zeros((1, 5, 4)), np.zeros((1, 4)), np.zeros((1, 5)), np.zeros(1)],
        [np.zeros((1, 5, 4)), np.zeros((1, 5)), np.zeros((1, 5)), np.array([np.nan])],
        [np.zeros((1, 1, 5, 6))],
    ],
)
def test_malformed_outputs_raise_decode_error(outputs):
    with pytest.raises(DecodeError):
        SSDDecoder()(outputs)


def test_registered_for_the_ssd_kind_and_params_are_validated():
    spec = InputSpec(width=300, height=300, dtype="uint8", letterbox=False)
    decoder = build_decoder(spec, PostprocessSpec(kind="ssd", params={"keep_classes": [1]}))
    assert isinstance(decoder, SSDDecoder)
    with pytest.raises(UnsupportedPostprocessError, match="SSD"):
        build_decoder(spec, PostprocessSpec(kind="ssd", params={"keep": [1]}))
