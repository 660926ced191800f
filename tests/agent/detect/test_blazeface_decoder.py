"""BlazeFace anchors and box decoding, on synthetic raw outputs."""

import warnings
from collections.abc import Mapping

import numpy as np
import pytest

from agent.detect.blazeface import BlazeFaceDecoder, BlazeFaceParams, build, generate_anchors
from agent.detect.decoding import DecodeError, UnsupportedPostprocessError, build_decoder
from ota.manifest import InputSpec, PostprocessSpec

SILENT = -100.0  # a logit no threshold lets through


def raw_outputs(hits: Mapping[int, tuple[float, tuple[float, float, float, float]]]):
    """Model-shaped outputs: one logit and (dx, dy, w, h) in input pixels per anchor hit."""
    logits = np.full((1, 896, 1), SILENT, dtype=np.float32)
    regressors = np.zeros((1, 896, 16), dtype=np.float32)
    for anchor, (logit, box) in hits.items():
        logits[0, anchor, 0] = logit
        regressors[0, anchor, :4] = box
    return [logits, regressors]


def test_short_range_model_has_896_anchors_in_the_order_it_emits_them():
    anchors = generate_anchors(128, 128)

    assert anchors.shape == (896, 2)
    assert np.all((anchors > 0) & (anchors < 1))
    # stride 8: 16x16 cells, two anchors per cell, row by row
    np.testing.assert_allclose(anchors[0], [0.5 / 16, 0.5 / 16])
    np.testing.assert_allclose(anchors[1], anchors[0])
    np.testing.assert_allclose(anchors[2], [1.5 / 16, 0.5 / 16])
    np.testing.assert_allclose(anchors[32], [0.5 / 16, 1.5 / 16])
    np.testing.assert_allclose(anchors[511], [15.5 / 16, 15.5 / 16])
    # three stride-16 layers share one 8x8 map: six anchors per cell
    np.testing.assert_allclose(anchors[512:518], np.tile([0.5 / 8, 0.5 / 8], (6, 1)))
    np.testing.assert_allclose(anchors[518], [1.5 / 8, 0.5 / 8])
    np.testing.assert_allclose(anchors[-1], [7.5 / 8, 7.5 / 8])


def test_anchor_count_follows_strides_and_input_size():
    assert generate_anchors(256, 256, (16, 32, 32, 32)).shape == (896, 2)
    assert generate_anchors(192, 192, (4,), anchors_per_layer=1).shape == (48 * 48, 2)


def test_box_is_anchor_centre_plus_offset_with_size_scaled_by_input():
    decoder = BlazeFaceDecoder(128, 128)
    anchor = 512 + 6 * (8 * 3 + 2)  # stride-16 cell at column 2, row 3: centre (2.5/8, 3.5/8)

    decoded = decoder(raw_outputs({anchor: (3.0, (6.4, -3.2, 32.0, 25.6))}))

    assert len(decoded) == 1
    cx, cy = 2.5 / 8 + 6.4 / 128, 3.5 / 8 - 3.2 / 128
    w, h = 32.0 / 128, 25.6 / 128
    np.testing.assert_allclose(
        decoded.boxes[0], [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], atol=1e-6
    )
    np.testing.assert_allclose(decoded.scores, [1 / (1 + np.exp(-3.0))])
    assert decoded.classes.tolist() == [0]


def test_scores_below_the_threshold_and_empty_boxes_are_dropped():
    decoder = BlazeFaceDecoder(128, 128, score_threshold=0.75)
    decoded = decoder(
        raw_outputs(
            {
                10: (np.log(0.7 / 0.3), (0, 0, 20, 20)),  # score 0.7
                600: (4.0, (0, 0, 0, 20)),  # no width
                700: (4.0, (0, 0, 20, 20)),
            }
        )
    )
    assert len(decoded) == 1
    np.testing.assert_allclose(decoded.boxes[0, :2], generate_anchors(128, 128)[700] - 10 / 128)


def test_huge_logits_are_clipped_so_the_sigmoid_cannot_overflow():
    decoder = BlazeFaceDecoder(128, 128)
    outputs = raw_outputs({100: (1e30, (0, 0, 20, 20))})
    outputs[0][0, :100, 0] = -1e30
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        decoded = decoder(outputs)
    assert decoded.scores.tolist() == [1.0]


def test_neighbouring_anchors_on_one_face_merge_into_one_weighted_box():
    # the two anchors of one stride-8 cell fire on slightly different boxes
    outputs = raw_outputs({40: (2.0, (0, 0, 24, 24)), 41: (1.0, (2, 2, 24, 24))})

    weighted = BlazeFaceDecoder(128, 128)(outputs)
    plain = build(
        InputSpec(width=128, height=128), PostprocessSpec(kind="blazeface", params={"nms": "plain"})
    )(outputs)

    assert len(weighted) == len(plain) == 1
    s1, s2 = 1 / (1 + np.exp(-2.0)), 1 / (1 + np.exp(-1.0))
    shift = (2 / 128) * s2 / (s1 + s2)
    np.testing.assert_allclose(weighted.boxes[0] - plain.boxes[0], [shift] * 4, atol=1e-9)
    assert weighted.scores[0] == plain.scores[0] == pytest.approx(s1)


def test_max_detections_caps_the_faces_returned():
    hits = {i * 50: (2.0 + i / 10, (0, 0, 10, 10)) for i in range(10)}
    decoded = BlazeFaceDecoder(128, 128, max_detections=3)(raw_outputs(hits))
    assert len(decoded) == 3
    assert list(decoded.scores) == sorted(decoded.scores, reverse=True)


def test_outputs_are_recognised_by_shape_in_either_order():
    logits, regressors = raw_outputs({300: (2.0, (0, 0, 16, 16))})
    decoder = BlazeFaceDecoder(128, 128)
    a = decoder([logits, regressors])
    b = decoder([regressors, logits[0]])
    np.testing.assert_array_equal(a.boxes, b.boxes)


@pytest.mark.parametrize(
    "outputs",
    [
        [np.zeros((1, 896, 1))],
        [np.zeros((1, 895, 1)), np.zeros((1, 895, 16))],
        [np.zeros((1, 896, 1)), np.zeros((1, 896, 3))],
    ],
)
def test_outputs_of_another_model_are_refused(outputs):
    with pytest.raises(DecodeError):
        BlazeFaceDecoder(128, 128)(outputs)


def test_registry_builds_the_blazeface_decoder_from_the_manifest_specs():
    spec = PostprocessSpec(
        kind="blazeface", score_threshold=0.6, max_detections=5, params={"strides": [8, 16, 16, 16]}
    )
    decoder = build_decoder(InputSpec(width=128, height=128), spec)
    assert isinstance(decoder, BlazeFaceDecoder)
    assert decoder.score_threshold == 0.6
    assert decoder.max_detections == 5
    assert decoder.params == BlazeFaceParams()


def test_unknown_parameters_and_kinds_are_refused():
    with pytest.raises(UnsupportedPostprocessError, match="invalid BlazeFace params"):
        build_decoder(
            InputSpec(width=128, height=128),
            PostprocessSpec(kind="blazeface", params={"strides_": 8}),
        )
    # every kind the manifest allows has a decoder now; an agent older than its bundle
    # may still meet one it lacks
    with pytest.raises(UnsupportedPostprocessError, match="'hailo'"):
        build_decoder(
            InputSpec(width=128, height=128),
            PostprocessSpec.model_construct(kind="hailo"),  # type: ignore[arg-type]
        )
