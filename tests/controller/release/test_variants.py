"""Variant generation at bundle build: OpenVINO IR from the real models, cached, validated."""

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from agent.runtimes.litert import LiteRTRuntime
from agent.runtimes.openvino import OpenVINORuntime
from controller.release.recipes import resolve_spec
from controller.release.variants import (
    GenerateSpec,
    VariantGenerationError,
    convert_to_openvino,
)
from ota.build import build_bundle

BLAZEFACE_SHAPE = (1, 128, 128, 3)

BLAZEFACE_SPEC = {
    "name": "blazeface-short",
    "version": 1,
    "labels": ["face"],
    "input": {"width": 128, "height": 128},
    "postprocess": {"kind": "blazeface"},
}


@pytest.fixture(scope="module")
def converted(blazeface_model, tmp_path_factory):
    """BlazeFace converted afresh (no shared cache) at both precisions."""
    cache = tmp_path_factory.mktemp("variants")
    return cache, {
        precision: convert_to_openvino(
            blazeface_model, cache, precision=precision, input_shape=BLAZEFACE_SHAPE
        )
        for precision in ("fp32", "fp16")
    }


def test_tflite_becomes_an_ir_pair_that_computes_what_the_source_computes(
    blazeface_model, converted
):
    _, models = converted
    tensor = np.random.default_rng(7).uniform(-1, 1, BLAZEFACE_SHAPE).astype(np.float32)
    with LiteRTRuntime(num_threads=1) as litert:
        litert.load(blazeface_model)
        expected = litert.infer(tensor)
    for precision, model in models.items():
        assert model.xml.is_file() and model.bin.is_file()
        assert model.xml.with_suffix(".bin") == model.bin
        with OpenVINORuntime(num_threads=1) as runtime:
            runtime.load(model.xml)
            got = runtime.infer(tensor)
        for a, b in zip(expected, got, strict=True):
            # fp16 weights round the regressors (model-input pixels) a little more
            np.testing.assert_allclose(a, b, atol=0.05 if precision == "fp32" else 0.5)


def test_fp16_compression_halves_fp32_weights(tmp_path):
    from controller.release.models import fetch_model

    # CenterFace stores fp32 weights (BlazeFace's .tflite already holds fp16 ones)
    sizes = {
        precision: convert_to_openvino(
            fetch_model("centerface"), tmp_path, precision=precision, input_shape=(1, 3, 64, 64)
        )
        .bin.stat()
        .st_size
        for precision in ("fp32", "fp16")
    }
    assert 0.45 < sizes["fp16"] / sizes["fp32"] < 0.55


def test_the_same_conversion_is_served_from_the_cache(blazeface_model, converted):
    cache, models = converted
    before = models["fp16"].xml.stat().st_mtime_ns
    again = convert_to_openvino(
        blazeface_model, cache, precision="fp16", input_shape=BLAZEFACE_SHAPE
    )
    assert again == models["fp16"]
    assert again.xml.stat().st_mtime_ns == before
    # no staging folders are left behind
    assert sorted(p.name.startswith(".") for p in cache.iterdir()) == [False, False]


def test_onnx_is_converted_for_the_bundle_input_size(tmp_path):
    from controller.release.models import fetch_model

    model = convert_to_openvino(
        fetch_model("centerface"), tmp_path, precision="fp16", input_shape=(1, 3, 96, 128)
    )
    with OpenVINORuntime(num_threads=1) as runtime:
        runtime.load(model.xml)
        assert runtime.input_details().shape == (1, 3, 96, 128)
        assert runtime.output_details()[0].shape == (1, 1, 24, 32)


def test_unknown_formats_missing_files_and_missing_outputs_are_refused(tmp_path, blazeface_model):
    (tmp_path / "model.bin").write_bytes(b"\0" * 16)
    with pytest.raises(VariantGenerationError, match=r"\.tflite, \.onnx, \.pb"):
        convert_to_openvino(tmp_path / "model.bin", tmp_path, precision="fp16", input_shape=(1,))
    with pytest.raises(VariantGenerationError, match="does not exist"):
        convert_to_openvino(tmp_path / "gone.onnx", tmp_path, precision="fp16", input_shape=(1,))
    with pytest.raises(VariantGenerationError, match="no_such_output"):
        convert_to_openvino(
            blazeface_model,
            tmp_path / "cache",
            precision="fp16",
            input_shape=BLAZEFACE_SHAPE,
            outputs=("regressors", "no_such_output"),
        )


def test_picked_outputs_are_kept_under_their_own_names_only(tmp_path, blazeface_model):
    model = convert_to_openvino(
        blazeface_model,
        tmp_path,
        precision="fp32",
        input_shape=BLAZEFACE_SHAPE,
        outputs=("regressors",),
    )
    with OpenVINORuntime(num_threads=1) as runtime:
        runtime.load(model.xml)
        assert [o.name for o in runtime.output_details()] == ["regressors"]


@pytest.mark.parametrize(
    "entry",
    [
        {"runtime": "onnx", "from": "litert"},
        {"runtime": "openvino", "precision": "int8", "from": "litert"},
        {"runtime": "openvino", "from": ""},
        {"runtime": "openvino"},
        {"runtime": "openvino", "from": "litert", "device": "CPU"},
    ],
)
def test_generate_entries_are_validated(entry):
    with pytest.raises(ValidationError):
        GenerateSpec.model_validate(entry)


def test_generate_from_a_runtime_the_spec_lacks_is_refused(tmp_path):
    raw = {**BLAZEFACE_SPEC, "generate": [{"runtime": "openvino", "from": "onnx"}]}
    with pytest.raises(VariantGenerationError, match="no variant for that runtime"):
        resolve_spec(raw, tmp_path)


def test_a_spec_build_carries_the_generated_variant(tmp_path, blazeface_model, release_key):
    raw = {
        **BLAZEFACE_SPEC,
        "variants": [{"runtime": "litert", "model": str(blazeface_model)}],
        "generate": [{"runtime": "openvino", "precision": "fp16", "from": "litert"}],
    }
    spec = resolve_spec(raw, tmp_path / "cache")
    assert [(v.runtime, v.precision) for v in spec.variants] == [
        ("litert", "fp32"),
        ("openvino", "fp16"),
    ]

    built = build_bundle(
        spec, tmp_path, [release_key], tmp_path / "b.bundle", datetime.now(timezone.utc)
    )
    variant = built.manifest.variant_for("openvino")
    assert variant is not None
    assert variant.model == "openvino-fp16/face_detection_short_range.xml"
    assert [Path(f.path).name for f in variant.files] == [
        "face_detection_short_range.xml",
        "face_detection_short_range.bin",
    ]
