"""Non-maximum suppression, plain and weighted, per class."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.detect.nms import iou_matrix, nms, weighted_nms


def test_iou_of_identical_disjoint_and_half_shifted_boxes():
    a = np.array([[0.0, 0.0, 2.0, 2.0]])
    b = np.array([[0.0, 0.0, 2.0, 2.0], [5.0, 5.0, 6.0, 6.0], [1.0, 0.0, 3.0, 2.0]])
    np.testing.assert_allclose(iou_matrix(a, b), [[1.0, 0.0, 1.0 / 3.0]])


def test_empty_and_inverted_boxes_overlap_nothing():
    boxes = np.array([[1.0, 1.0, 1.0, 1.0], [2.0, 2.0, 1.0, 1.0]])
    assert np.all(iou_matrix(boxes, boxes) == 0.0)


def test_lower_scored_overlapping_box_is_suppressed_and_a_distant_one_kept():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], dtype=float)
    scores = np.array([0.8, 0.9, 0.7])
    assert nms(boxes, scores, 0.5).tolist() == [1, 2]


def test_boxes_of_different_classes_do_not_suppress_each_other():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]], dtype=float)
    scores = np.array([0.9, 0.8, 0.7])
    classes = np.array([0, 1, 0])
    assert nms(boxes, scores, 0.5, classes=classes).tolist() == [0, 1]


def test_overlap_equal_to_the_threshold_is_not_suppressed():
    boxes = np.array([[0, 0, 2, 2], [1, 0, 3, 2]], dtype=float)  # IoU exactly 1/3
    scores = np.array([0.9, 0.8])
    assert nms(boxes, scores, 1.0 / 3.0).tolist() == [0, 1]
    assert nms(boxes, scores, 0.33).tolist() == [0]


def test_max_detections_keeps_the_best():
    boxes = np.array([[i * 10, 0, i * 10 + 5, 5] for i in range(5)], dtype=float)
    scores = np.array([0.1, 0.5, 0.3, 0.9, 0.7])
    assert nms(boxes, scores, 0.5, max_detections=2).tolist() == [3, 4]


def test_no_boxes_in_no_boxes_out():
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).shape == (0,)
    boxes, scores, classes = weighted_nms(np.zeros((0, 4)), np.zeros(0), 0.5)
    assert boxes.shape == (0, 4) and scores.shape == (0,) and classes.shape == (0,)


def test_mismatched_arrays_are_refused():
    with pytest.raises(ValueError, match="scores"):
        nms(np.zeros((3, 4)), np.zeros(2), 0.5)
    with pytest.raises(ValueError, match="boxes"):
        nms(np.zeros((3, 5)), np.zeros(3), 0.5)
    with pytest.raises(ValueError, match="classes"):
        weighted_nms(np.zeros((3, 4)), np.zeros(3), 0.5, classes=np.zeros(2))


def test_weighted_nms_blends_a_cluster_by_score_and_keeps_the_best_score():
    boxes = np.array([[0, 0, 10, 10], [2, 2, 12, 12], [100, 100, 110, 110]], dtype=float)
    scores = np.array([0.75, 0.25, 0.5])

    merged, merged_scores, classes = weighted_nms(boxes, scores, 0.3)

    np.testing.assert_allclose(merged, [[0.5, 0.5, 10.5, 10.5], [100.0, 100.0, 110.0, 110.0]])
    np.testing.assert_allclose(merged_scores, [0.75, 0.5])
    assert classes.tolist() == [0, 0]


def test_weighted_nms_keeps_classes_apart():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11]], dtype=float)
    merged, scores, classes = weighted_nms(
        boxes, np.array([0.6, 0.9]), 0.3, classes=np.array([4, 2])
    )
    np.testing.assert_allclose(merged, boxes[[1, 0]])
    assert classes.tolist() == [2, 4]
    np.testing.assert_allclose(scores, [0.9, 0.6])


coords = st.floats(min_value=0.0, max_value=100.0, allow_nan=False)
box_strategy = st.tuples(coords, coords, st.floats(0.5, 40.0), st.floats(0.5, 40.0)).map(
    lambda t: (t[0], t[1], t[0] + t[2], t[1] + t[3])
)


@settings(max_examples=200)
@given(
    data=st.lists(
        st.tuples(box_strategy, st.floats(0.0, 1.0), st.integers(0, 2)), min_size=1, max_size=30
    ),
    threshold=st.floats(0.05, 0.95),
)
def test_kept_boxes_never_overlap_and_every_dropped_box_had_a_stronger_neighbour(data, threshold):
    boxes = np.array([d[0] for d in data])
    scores = np.array([d[1] for d in data])
    classes = np.array([d[2] for d in data])

    kept = nms(boxes, scores, threshold, classes=classes)

    assert list(scores[kept]) == sorted(scores[kept], reverse=True)
    ious = iou_matrix(boxes, boxes)
    for i in kept:
        for j in kept:
            if i != j and classes[i] == classes[j]:
                assert ious[i, j] <= threshold
    for dropped in set(range(len(data))) - set(kept.tolist()):
        assert any(
            classes[k] == classes[dropped]
            and ious[k, dropped] > threshold
            and scores[k] >= scores[dropped]
            for k in kept
        )
