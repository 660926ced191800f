"""The manifest's runtime field: one list of runtime keys, and signed bytes that stay the same."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from ota.canonical import canonical_json
from ota.manifest import Manifest
from protocol.events import RuntimeKey
from tests.ota.ota_forge import manifest_for

FILES = {"litert-fp32/model.tflite": b"model", "shared/labels.txt": b"face\n"}


def test_signed_bytes_carry_the_runtime_as_its_plain_string() -> None:
    manifest = manifest_for(FILES)

    raw = manifest.canonical_bytes()

    assert b'"runtime":"litert"' in raw
    assert json.loads(raw)["variants"][0]["runtime"] == "litert"
    # a device re-serialising what it parsed gets the bytes that were signed
    assert canonical_json(json.loads(raw)) == raw
    assert Manifest.model_validate_json(raw, strict=True).canonical_bytes() == raw


def test_runtime_read_from_json_is_the_runtime_key() -> None:
    raw = manifest_for(FILES).canonical_bytes()

    variant = Manifest.model_validate_json(raw, strict=True).variants[0]

    assert variant.runtime is RuntimeKey.LITERT
    assert variant.model_dump()["runtime"] == "litert"
    assert variant.model_dump(mode="json")["runtime"] == "litert"
    assert f"{variant.runtime}-{variant.precision}" == "litert-fp32"


@pytest.mark.parametrize("runtime", ["tflite", "LITERT", "", "hailo"])
def test_runtime_that_is_not_a_runtime_key_is_refused(runtime: str) -> None:
    data = json.loads(manifest_for(FILES).canonical_bytes())
    data["variants"][0]["runtime"] = runtime

    with pytest.raises(ValidationError, match="runtime"):
        Manifest.model_validate_json(json.dumps(data), strict=True)


def test_every_runtime_key_is_a_manifest_runtime() -> None:
    data = json.loads(manifest_for(FILES).canonical_bytes())
    for key in RuntimeKey:
        data["variants"][0]["runtime"] = key.value

        parsed = Manifest.model_validate_json(json.dumps(data), strict=True)

        assert parsed.variants[0].runtime is key
        assert parsed.variant_for(key.value) is parsed.variants[0]
