"""`edgefleet-agent trust show|update` on an offline device, with roots from `edgefleet keys`."""

from __future__ import annotations

import shutil
from pathlib import Path

from agent.cli import main as agent_main
from controller.cli.main import main as edgefleet
from ota.trust_file import load_trust_store


def test_trust_update_walks_the_root_chain_and_never_steps_back(tmp_path: Path, capsys):
    keys = tmp_path / "keys"
    assert edgefleet(["keys", "init", "--dir", str(keys)]) == 0
    for _ in range(2):
        assert edgefleet(["keys", "rotate-root", "--dir", str(keys)]) == 0
    device = tmp_path / "device-trust.json"
    shutil.copy(keys / "root.1.json", device)
    common = ["--trust", str(device), "--data-dir", str(tmp_path / "agent")]
    capsys.readouterr()

    v2, v3 = str(keys / "root.2.json"), str(keys / "root.3.json")
    assert agent_main(["trust", "update", v3, *common]) == 1
    assert "refused root_threshold_not_met" in capsys.readouterr().err
    assert load_trust_store(device).root_version == 1

    assert agent_main(["trust", "update", v2, v3, *common]) == 0
    assert load_trust_store(device).root_version == 3
    # resending an older root is a no-op, never a step back
    assert agent_main(["trust", "update", v2, *common]) == 0
    assert "trusting root version 3" in capsys.readouterr().out

    assert agent_main(["trust", "show", *common]) == 0
    out = capsys.readouterr().out
    assert "root version 3" in out and "threshold  1 of 1 release keys" in out
