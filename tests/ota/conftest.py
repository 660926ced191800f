from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from ota.keys import SigningKey
from ota.trust import TrustStore


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def trust(key: SigningKey) -> TrustStore:
    return TrustStore.from_keys([key.public_key()])


@pytest.fixture
def files() -> dict[str, bytes]:
    """Bundle paths to contents: a random "model" and a small labels file."""
    return {
        "litert-fp32/model.tflite": os.urandom(70_000),
        "shared/labels.txt": b"face\n",
    }


@pytest.fixture
def spec_dir(tmp_path: Path) -> Path:
    """A folder with a bundle spec and random model files, two variants sharing labels."""
    src = tmp_path / "src"
    (src / "models").mkdir(parents=True)
    (src / "models" / "face.tflite").write_bytes(os.urandom(50_000))
    (src / "models" / "face.onnx").write_bytes(os.urandom(20_000))
    (src / "labels.txt").write_text("face\n")
    spec = {
        "name": "face",
        "version": 3,
        "labels": ["face"],
        "input": {"width": 128, "height": 128},
        "postprocess": {"kind": "blazeface", "score_threshold": 0.6},
        "expires_days": 30,
        "compatibility": {"profiles": ["rpi5", "jetson-orin"]},
        "variants": [
            {"runtime": "litert", "model": "models/face.tflite", "extra_files": ["labels.txt"]},
            {
                "runtime": "onnx",
                "precision": "fp16",
                "model": "models/face.onnx",
                "extra_files": ["labels.txt"],
            },
        ],
    }
    (src / "bundle.yaml").write_text(yaml.safe_dump(spec))
    return src
