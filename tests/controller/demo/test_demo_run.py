"""`edgefleet demo` end to end: the real agent on the sample video over the TLS broker, and
simulated devices that enroll, connect with their certificates and take a rollout."""

from __future__ import annotations

import re

import pytest

from controller.demo.run import run_demo

pytestmark = pytest.mark.e2e


def test_the_demo_runs_the_agent_and_rolls_the_simulated_fleet(tmp_path, capsys):
    result = run_demo(40.0, tmp_path / "demo", simulated=6)
    out = capsys.readouterr().out
    assert result.detections > 0 and result.frames > 0, out[-2000:]
    assert (result.devices, result.simulated) == (7, 6)
    assert result.bundle == "blazeface-short@1" and result.runtime == "litert"
    assert result.rollout == "completed", out[-2000:]
    assert "TLS broker" in out  # the simulated devices used client certificates too
    assert re.search(r"sign in once with http://127\.0\.0\.1:\d+/api/auth/link\?token=ef_", out)
    # every simulated device got its certificate through the enrollment service
    identities = sorted(p.name for p in (tmp_path / "demo" / "sim" / "identities").iterdir())
    assert identities == sorted(
        [f"sim-cam-{i:04d}.key" for i in range(6)] + [f"sim-cam-{i:04d}.pem" for i in range(6)]
    )
    assert result.line().startswith("RESULT devices=7 ")
