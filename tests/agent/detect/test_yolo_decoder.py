"""YOLO v5/v8 heads decoded from synthetic output tensors with known boxes."""

from __future__ import annotations

import numpy as np
import pytest

from agent.detect.decoding import DecodeError, UnsupportedPostprocessError, build_decoder
from agent.detect.nms import iou_matrix
from agent.detect.yolo import YoloDecoder, YoloParams
from ota.manifest import InputSpec, PostprocessSpec

SIZE = 640
CLASSES = 3  # person, bicycle, car


def _candidate(box_px, class_scores, objectness=None) -> list[float]:
    x1, y1, x2, y2 = box_px
    row = [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]
    if objectness is not None:
        row.append(objectness)
    return row + list(class_scores)


# (box in input pixels, class scores): two objects plus a weaker duplicate of the first and
# a low-scoring candidate; the person rides the bicycle, so their boxes overlap heavily
PERSON = (100.0, 80.0, 220.0, 400.0)
BICYCLE = (110.0, 200.0, 230.0, 410.0)
CAR = (400.0, 300.0, 600.0, 420.0)
CANDIDATES = [
    (PERSON, (0.9, 0.05, 0.0)),
    ((104.0, 84.0, 222.0, 396.0), (0.7, 0.1, 0.0)),  # same person, weaker
    (BICYCLE, (0.1, 0.8, 0.0)),
    (CAR, (0.0, 0.0, 0.6)),
    ((10.0, 10.0, 50.0, 50.0), (0.1, 0.05, 0.1)),  # below any threshold used here
]


def _v8_head() -> np.ndarray:
    rows = [_candidate(box, scores) for box, scores in CANDIDATES]
    return np.asarray(rows, dtype=np.float32).T[None]  # (1, 4 + C, N)


def _v5_head(objectness: float = 1.0) -> np.ndarray:
    rows = [_candidate(box, scores, objectness) for box, scores in CANDIDATES]
    return np.asarray(rows, dtype=np.float32)[None]  # (1, N, 5 + C)


def _norm(box) -> np.ndarray:
    return np.asarray(box) / SIZE


def _decoder(version: str, **params) -> YoloDecoder:
    return YoloDecoder(
        SIZE,
        SIZE,
        score_threshold=0.25,
        iou_threshold=0.45,
        params=YoloParams(version=version, **params),
    )


def _check_objects(decoded) -> None:
    assert decoded.classes.tolist() == [0, 1, 2]
    np.testing.assert_allclose(decoded.scores, [0.9, 0.8, 0.6], atol=1e-6)
    expected = np.stack([_norm(PERSON), _norm(BICYCLE), _norm(CAR)])
    np.testing.assert_allclose(decoded.boxes, expected, atol=1e-5)


def test_v8_head_keeps_overlapping_objects_of_different_classes():
    decoded = _decoder("v8")([_v8_head()])
    # the person and the bicycle overlap far above the IoU threshold and both survive
    assert iou_matrix(_norm(PERSON)[None], _norm(BICYCLE)[None])[0, 0] > 0.45
    _check_objects(decoded)


def test_v5_head_with_full_objectness_matches_v8():
    _check_objects(_decoder("v5")([_v5_head(1.0)]))


def test_v5_objectness_scales_the_class_scores():
    decoded = _decoder("v5")([_v5_head(0.5)])
    # 0.9 * 0.5 and 0.8 * 0.5 pass 0.25; the car's 0.6 * 0.5 does too; nothing else does
    np.testing.assert_allclose(decoded.scores, [0.45, 0.4, 0.3], atol=1e-6)
    low = _decoder("v5")([_v5_head(0.2)])
    assert len(low) == 0


def test_same_class_duplicate_is_suppressed_but_survives_without_nms_overlap():
    decoded = _decoder("v8")([_v8_head()])
    assert (decoded.classes == 0).sum() == 1
    loose = YoloDecoder(
        SIZE, SIZE, score_threshold=0.25, iou_threshold=0.99, params=YoloParams(version="v8")
    )([_v8_head()])
    assert (loose.classes == 0).sum() == 2


def test_layout_override_and_normalized_boxes():
    rows = np.asarray(
        [_candidate(_norm(box), scores) for box, scores in CANDIDATES], dtype=np.float32
    )
    decoded = _decoder("v8", layout="candidates", normalized=True)([rows[None]])
    _check_objects(decoded)


def test_output_index_picks_the_detection_head():
    aux = np.zeros((1, 3, 20, 20, 8), dtype=np.float32)
    _check_objects(_decoder("v8", output_index=1)([aux, _v8_head()]))


def test_candidate_cap_keeps_the_best():
    decoded = _decoder("v8", max_candidates=1)([_v8_head()])
    assert decoded.classes.tolist() == [0]


def test_malformed_heads_are_refused():
    with pytest.raises(DecodeError, match="layout wrong"):
        _decoder("v5")([_v8_head()[:, :4, :3]])
    with pytest.raises(DecodeError, match="per image"):
        _decoder("v8")([np.zeros((2, 3, 7, 5), np.float32)])
    with pytest.raises(DecodeError, match="output 2"):
        _decoder("v8", output_index=2)([_v8_head()])


def test_registered_under_yolo_and_params_validated():
    spec = InputSpec(width=SIZE, height=SIZE, layout="nchw")
    post = PostprocessSpec(kind="yolo", score_threshold=0.5, params={"version": "v5"})
    decoder = build_decoder(spec, post)
    assert isinstance(decoder, YoloDecoder)
    assert decoder([_v5_head()]).classes.tolist() == [0, 1, 2]
    with pytest.raises(UnsupportedPostprocessError, match="invalid YOLO params"):
        build_decoder(spec, PostprocessSpec(kind="yolo", params={"version": "v7"}))
