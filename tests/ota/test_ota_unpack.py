from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from ota.errors import BundleRefused
from ota.keys import SigningKey
from ota.trust import TrustStore
from ota.unpack import DirectorySink, verify_bundle_file
from protocol.events import RefusalReason
from tests.ota.ota_forge import NOW, file_members, forge, head, manifest_for, write_tar

MODEL = "litert-fp32/model.tflite"
LABELS = "shared/labels.txt"


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_verified_files_land_under_their_own_names(
    files: dict[str, bytes], key: SigningKey, trust: TrustStore, tmp_path: Path
) -> None:
    bundle = forge(tmp_path / "b.tar", files, [key])
    dest = tmp_path / "out"

    manifest = verify_bundle_file(bundle, trust, NOW, dest_dir=dest)

    assert manifest.name == "face"
    assert tree(dest) == {"litert-fp32", MODEL, "shared", LABELS}
    assert {p: (dest / p).read_bytes() for p in files} == files
    assert stat.S_IMODE((dest / MODEL).stat().st_mode) == 0o644


def test_refused_bundle_leaves_nothing_behind(
    files: dict[str, bytes], key: SigningKey, trust: TrustStore, tmp_path: Path
) -> None:
    # the model verifies and is committed before the labels fail
    raw = manifest_for(files).canonical_bytes()
    swapped = {**files, LABELS: b"evil\n"}
    bundle = write_tar(tmp_path / "b.tar", [*head(raw, [key]), *file_members(swapped)])
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "keep.txt").write_text("was here before")

    with pytest.raises(BundleRefused) as caught:
        verify_bundle_file(bundle, trust, NOW, dest_dir=dest)

    assert caught.value.reason is RefusalReason.HASH_MISMATCH
    assert tree(dest) == {"keep.txt"}


def test_file_is_invisible_under_its_name_until_committed(tmp_path: Path) -> None:
    sink = DirectorySink(tmp_path / "out")

    out = sink.open(MODEL)
    out.write(b"half a model")
    written = tree(tmp_path / "out")

    assert MODEL not in written
    assert any(name.startswith("litert-fp32/.model.tflite.") for name in written)
    sink.commit(MODEL)
    assert tree(tmp_path / "out") == {"litert-fp32", MODEL}
    assert (tmp_path / "out" / MODEL).read_bytes() == b"half a model"


def test_discard_removes_open_and_committed_files_and_made_folders(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    sink = DirectorySink(dest)
    sink.open(MODEL).write(b"m")
    sink.commit(MODEL)
    sink.open("a/b/c.bin").write(b"partial")

    sink.discard()
    sink.discard()

    assert tree(dest) == set()


@pytest.mark.parametrize("path", ["../escape", "/abs", "a/../b", ""])
def test_sink_refuses_unsafe_paths_itself(tmp_path: Path, path: str) -> None:
    sink = DirectorySink(tmp_path / "out")

    with pytest.raises(ValueError):
        sink.open(path)
    assert tree(tmp_path) == {"out"}


def test_sink_never_replaces_an_existing_file(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    (dest / "shared").mkdir(parents=True)
    (dest / LABELS).write_text("mine")
    os.symlink("/etc/passwd", dest / "shared" / "link.txt")
    sink = DirectorySink(dest)

    for path in (LABELS, "shared/link.txt"):
        with pytest.raises(FileExistsError):
            sink.open(path)
    assert (dest / LABELS).read_text() == "mine"
