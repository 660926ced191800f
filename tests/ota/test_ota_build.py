from __future__ import annotations

import hashlib
import json
import tarfile
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from ota.build import BundleSpec, build_bundle
from ota.keys import SigningKey
from tests.ota.ota_forge import NOW


def test_spec_loads_from_yaml(spec_dir: Path) -> None:
    spec = BundleSpec.from_yaml(spec_dir / "bundle.yaml")

    assert spec.name == "face"
    assert spec.expires_days == 30
    assert [v.runtime for v in spec.variants] == ["litert", "onnx"]
    assert spec.variants[1].extra_files == ("labels.txt",)
    assert spec.postprocess.score_threshold == 0.6


def test_spec_with_unknown_field_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bundle.yaml"
    path.write_text(
        "name: face\nversion: 1\nlabels: [face]\ninput: {width: 1, height: 1}\n"
        "postprocess: {kind: ssd}\nvariants: [{runtime: onnx, model: m.onnx}]\nsigned: yes\n"
    )

    with pytest.raises(ValidationError, match="signed"):
        BundleSpec.from_yaml(path)


def test_bundle_members_come_in_the_documented_order(
    spec_dir: Path, key: SigningKey, tmp_path: Path
) -> None:
    spec = BundleSpec.from_yaml(spec_dir / "bundle.yaml")

    built = build_bundle(spec, spec_dir, [key], tmp_path / "face.bundle", NOW)

    with tarfile.open(built.path, "r:") as tar:
        names = tar.getnames()
        raw = tar.extractfile("manifest.json").read()  # type: ignore[union-attr]
        sig_doc = json.loads(tar.extractfile("manifest.sig").read())  # type: ignore[union-attr]
        model = tar.extractfile("files/litert-fp32/face.tflite").read()  # type: ignore[union-attr]
    assert names == [
        "manifest.json",
        "manifest.sig",
        "files/litert-fp32/face.tflite",
        "files/shared/labels.txt",
        "files/onnx-fp16/face.onnx",
    ]
    assert raw == built.manifest.canonical_bytes()
    assert sig_doc == {"signatures": [{"keyid": key.keyid, "sig": sig_doc["signatures"][0]["sig"]}]}
    assert key.public_key().verify(bytes.fromhex(sig_doc["signatures"][0]["sig"]), raw)
    assert model == (spec_dir / "models" / "face.tflite").read_bytes()


def test_manifest_describes_each_file_and_shares_common_ones(
    spec_dir: Path, key: SigningKey, tmp_path: Path
) -> None:
    spec = BundleSpec.from_yaml(spec_dir / "bundle.yaml")

    manifest = build_bundle(spec, spec_dir, [key], tmp_path / "b", NOW).manifest

    litert, onnx = manifest.variants
    assert litert.model == "litert-fp32/face.tflite"
    assert onnx.model == "onnx-fp16/face.onnx"
    assert onnx.precision == "fp16"
    assert litert.files[1] == onnx.files[1]
    assert litert.files[1].path == "shared/labels.txt"
    model_bytes = (spec_dir / "models" / "face.tflite").read_bytes()
    assert litert.files[0].sha256 == hashlib.sha256(model_bytes).hexdigest()
    assert litert.files[0].size == len(model_bytes)
    assert manifest.created == NOW
    assert manifest.expires == NOW + timedelta(days=30)
    assert manifest.compatibility.profiles == ("rpi5", "jetson-orin")


def test_same_inputs_give_the_same_digest(spec_dir: Path, key: SigningKey, tmp_path: Path) -> None:
    spec = BundleSpec.from_yaml(spec_dir / "bundle.yaml")

    one = build_bundle(spec, spec_dir, [key], tmp_path / "one.bundle", NOW)
    two = build_bundle(spec, spec_dir, [key], tmp_path / "two.bundle", NOW)
    later = build_bundle(spec, spec_dir, [key], tmp_path / "later.bundle", NOW + timedelta(1))

    assert one.digest == two.digest
    assert one.path.read_bytes() == two.path.read_bytes()
    assert later.digest != one.digest
    assert one.digest == hashlib.sha256(one.path.read_bytes()).hexdigest()
    assert one.size == one.path.stat().st_size


def test_headers_carry_no_time_owner_or_pax_data(
    spec_dir: Path, key: SigningKey, tmp_path: Path
) -> None:
    spec = BundleSpec.from_yaml(spec_dir / "bundle.yaml")
    built = build_bundle(spec, spec_dir, [key], tmp_path / "b", NOW)

    with tarfile.open(built.path, "r:") as tar:
        members = tar.getmembers()

    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {
        (0, 0, 0, "", "", 0o644)
    }
    assert all(m.type == tarfile.REGTYPE and not m.pax_headers for m in members)


def test_absolute_model_paths_are_used_as_given(
    spec_dir: Path, key: SigningKey, tmp_path: Path
) -> None:
    spec = BundleSpec.model_validate(
        {
            **BundleSpec.from_yaml(spec_dir / "bundle.yaml").model_dump(),
            "variants": [{"runtime": "onnx", "model": str(spec_dir / "models" / "face.onnx")}],
        }
    )

    manifest = build_bundle(spec, tmp_path / "elsewhere", [key], tmp_path / "b", NOW).manifest

    assert [f.path for f in manifest.variants[0].files] == ["onnx-fp32/face.onnx"]


def test_each_distinct_key_signs_once(spec_dir: Path, key: SigningKey, tmp_path: Path) -> None:
    spec = BundleSpec.from_yaml(spec_dir / "bundle.yaml")
    other = SigningKey.generate()

    built = build_bundle(spec, spec_dir, [key, other, key], tmp_path / "b", NOW)

    with tarfile.open(built.path, "r:") as tar:
        sig_doc = json.loads(tar.extractfile("manifest.sig").read())  # type: ignore[union-attr]
    assert [s["keyid"] for s in sig_doc["signatures"]] == [key.keyid, other.keyid]


def test_missing_model_file_fails_and_writes_nothing(
    spec_dir: Path, key: SigningKey, tmp_path: Path
) -> None:
    spec = BundleSpec.from_yaml(spec_dir / "bundle.yaml")
    (spec_dir / "models" / "face.onnx").unlink()
    out = tmp_path / "out"
    out.mkdir()

    with pytest.raises(FileNotFoundError):
        build_bundle(spec, spec_dir, [key], out / "b", NOW)

    assert list(out.iterdir()) == []


def test_two_files_with_one_bundle_name_are_refused(
    spec_dir: Path, key: SigningKey, tmp_path: Path
) -> None:
    (spec_dir / "other").mkdir()
    (spec_dir / "other" / "labels.txt").write_text("person\n")
    spec = BundleSpec.model_validate(
        {
            **BundleSpec.from_yaml(spec_dir / "bundle.yaml").model_dump(),
            "variants": [
                {"runtime": "onnx", "model": "labels.txt", "extra_files": ["other/labels.txt"]}
            ],
        }
    )

    with pytest.raises(ValueError, match="would both be"):
        build_bundle(spec, spec_dir, [key], tmp_path / "b", NOW)


def test_building_without_keys_or_with_a_naive_time_is_refused(
    spec_dir: Path, key: SigningKey, tmp_path: Path
) -> None:
    spec = BundleSpec.from_yaml(spec_dir / "bundle.yaml")

    with pytest.raises(ValueError, match="signing key"):
        build_bundle(spec, spec_dir, [], tmp_path / "b", NOW)
    with pytest.raises(ValueError, match="UTC offset"):
        build_bundle(spec, spec_dir, [key], tmp_path / "b", NOW.replace(tzinfo=None))
    assert not (tmp_path / "b").exists()
