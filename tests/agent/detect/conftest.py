from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.detect.detector import Detector
from agent.runtimes.litert import LiteRTRuntime
from ota.manifest import InputSpec, PostprocessSpec


@pytest.fixture(scope="session")
def blazeface_input() -> InputSpec:
    """How a BlazeFace short-range bundle declares its input: 128x128 RGB floats in [-1, 1]."""
    return InputSpec(width=128, height=128, color="rgb", mean=(127.5,) * 3, std=(127.5,) * 3)


@pytest.fixture(scope="session")
def blazeface_postprocess() -> PostprocessSpec:
    return PostprocessSpec(kind="blazeface", score_threshold=0.5, iou_threshold=0.3)


@pytest.fixture(scope="module")
def litert_runtime(blazeface_model: Path) -> Iterator[LiteRTRuntime]:
    runtime = LiteRTRuntime(num_threads=1)
    runtime.load(blazeface_model)
    yield runtime
    runtime.close()


@pytest.fixture(scope="module")
def face_detector(
    litert_runtime: LiteRTRuntime,
    blazeface_input: InputSpec,
    blazeface_postprocess: PostprocessSpec,
) -> Detector:
    return Detector(litert_runtime, blazeface_input, blazeface_postprocess, ["face"])
