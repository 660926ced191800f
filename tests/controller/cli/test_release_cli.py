"""Release-side commands: keys, models, bundle build, checked by verifying what they made."""

from __future__ import annotations

import json
import stat
from datetime import datetime, timezone

import pytest

from controller.cli.main import main
from controller.release.recipes import SPECS_DIR
from ota.errors import BundleRefused
from ota.trust_file import load_trust_store
from ota.verify import verify_bundle
from protocol.events import RefusalReason


def test_keys_init_then_bundle_build_gives_a_bundle_the_trust_store_accepts(
    tmp_path, blazeface_model, capsys
):
    keys = tmp_path / "keys"
    assert main(["keys", "init", "--dir", str(keys), "--count", "2", "--threshold", "2"]) == 0
    for pem in ("release/release-1.pem", "release/release-2.pem"):
        assert stat.S_IMODE((keys / pem).stat().st_mode) == 0o600
    trust = load_trust_store(keys / "trust.json")
    assert trust.threshold == 2 and len(trust.release_keys) == 2

    out = tmp_path / "face.bundle"
    spec = SPECS_DIR / "blazeface-short.yaml"
    args = ["bundle", "build", str(spec), "--out", str(out), "--version", "7"]
    assert main([*args, "--key", str(keys / "release" / "release-1.pem")]) == 0
    with out.open("rb") as stream, pytest.raises(BundleRefused) as refused:
        verify_bundle(stream, trust, datetime.now(timezone.utc))
    assert refused.value.reason is RefusalReason.THRESHOLD_NOT_MET

    assert (
        main(
            [
                *args,
                "--key",
                str(keys / "release" / "release-1.pem"),
                "--key",
                str(keys / "release" / "release-2.pem"),
            ]
        )
        == 0
    )
    with out.open("rb") as stream:
        manifest = verify_bundle(stream, trust, datetime.now(timezone.utc))
    assert (manifest.name, manifest.version) == ("blazeface-short", 7)
    assert "digest" in capsys.readouterr().out


def test_keys_init_refuses_to_overwrite_keys(tmp_path):
    assert main(["keys", "init", "--dir", str(tmp_path)]) == 0
    before = (tmp_path / "release" / "release-1.pem").read_bytes()
    assert main(["keys", "init", "--dir", str(tmp_path)]) == 1
    assert (tmp_path / "release" / "release-1.pem").read_bytes() == before


def test_models_fetch_reports_cached_paths(blazeface_model, capsys):
    assert main(["models", "fetch", "blazeface-short"]) == 0
    assert str(blazeface_model) in capsys.readouterr().out


def test_bundle_build_with_a_bad_spec_fails_with_a_message(tmp_path, capsys):
    spec = tmp_path / "bad.yaml"
    spec.write_text(json.dumps({"name": "x", "version": 1}))
    key = tmp_path / "k"
    assert main(["keys", "init", "--dir", str(key)]) == 0
    rc = main(
        [
            "bundle",
            "build",
            str(spec),
            "--key",
            str(key / "release" / "release-1.pem"),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert rc == 1
    assert "edgefleet:" in capsys.readouterr().err
