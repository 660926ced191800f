"""`edgefleet-agent probe` and `bundle verify` as an operator runs them."""

from __future__ import annotations

import json

from agent.cli import main
from ota.trust_file import save_trust_store


def test_probe_reports_profile_preference_and_litert(capsys):
    assert main(["probe", "--json", "--profile", "intel-ncs2"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["profile"] == "intel-ncs2"
    assert report["preference"][0].startswith("openvino/MYRIAD")
    litert = next(r for r in report["runtimes"] if r["runtime"] == "litert")
    assert litert["available"] is True


def test_bundle_verify_accepts_a_signed_bundle_and_refuses_an_untrusted_one(
    tmp_path, trust, build_blazeface, capsys
):
    from ota.keys import SigningKey

    trust_file = tmp_path / "trust.json"
    save_trust_store(trust, trust_file)
    good = build_blazeface(version=1)
    common = ["--trust", str(trust_file), "--data-dir", str(tmp_path / "agent")]
    assert main(["bundle", "verify", str(good.path), *common]) == 0
    assert "ok blazeface-short@1" in capsys.readouterr().out
    bad = build_blazeface(version=2, key=SigningKey.generate())
    assert main(["bundle", "verify", str(bad.path), *common]) == 1
    assert "refused unknown_key" in capsys.readouterr().err
    assert main(["bundle", "install", str(good.path), *common]) == 0
    assert "installed blazeface-short@1" in capsys.readouterr().out
