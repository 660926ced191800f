"""Loading an installed bundle through the agent's loader, with real models and runtimes."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pytest

from agent.deploy.loader import load_model
from agent.detect.nms import iou_matrix
from agent.runtimes.base import probe_runtime
from agent.selection import choose_runtime
from controller.demo.sample_video import astronaut_frame
from controller.release.recipes import example_spec
from device_profiles.schema import RuntimePreference
from ota.build import build_bundle
from ota.install import SlotStore


@pytest.fixture(scope="module")
def centerface_installed(tmp_path_factory, release_key, trust):
    """The shipped CenterFace spec (onnx and opencv variants), built, signed and installed."""
    folder = tmp_path_factory.mktemp("centerface")
    spec = example_spec("centerface")
    built = build_bundle(
        spec, folder, [release_key], folder / "centerface.bundle", datetime.now(timezone.utc)
    )
    store = SlotStore(folder / "store")
    return store.install(built.path, trust, built.manifest.created)


@pytest.mark.parametrize("runtime", ["onnx", "opencv"])
def test_centerface_bundle_loads_through_the_loader_and_finds_the_astronaut(
    centerface_installed, runtime
):
    # the model file declares a 10x3x32x32 placeholder input: only the spec's 640x480 works
    frame, face = astronaut_frame((640, 480))
    choice = choose_runtime(centerface_installed.manifest, [probe_runtime(runtime)], (runtime,))
    model = load_model(centerface_installed, choice, threads=1)
    try:
        assert model.runtime == runtime
        found = model.detector.detect(frame)
    finally:
        model.close()
    assert found, "no face on the astronaut photo"
    best = found[0]
    assert best.label == "face"
    assert best.score > 0.5
    assert iou_matrix(np.array([best.box]), np.array([face]))[0, 0] > 0.5


def test_loader_reports_the_chosen_precision_and_device(centerface_installed):
    onnx = probe_runtime("onnx")
    assert "CPU" in onnx.devices
    pref = RuntimePreference(runtime="onnx", precision="fp32", device="CPU")
    choice = choose_runtime(centerface_installed.manifest, [onnx], [pref])
    model = load_model(centerface_installed, choice, threads=1)
    try:
        assert model.runtime == "onnx"
        assert "fp32 CPU preferred and available" in model.reason
    finally:
        model.close()
