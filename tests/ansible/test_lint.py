"""The playbooks parse, and ansible-lint's production profile passes with nothing downloaded."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = REPO / "ansible"
BIN = Path(sys.executable).parent
PLAYBOOKS = ("site.yml", "agents.yml", "controller.yml", "broker.yml")


def _env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"),
        "ANSIBLE_HOME": str(tmp_path / "ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp"),
        "ANSIBLE_NOCOLOR": "1",
        "NO_COLOR": "1",
    }


@pytest.mark.skipif(not (BIN / "ansible-playbook").exists(), reason="needs ansible-core")
@pytest.mark.parametrize("playbook", PLAYBOOKS)
def test_playbook_syntax(tmp_path, playbook):
    done = subprocess.run(
        [
            BIN / "ansible-playbook",
            "--syntax-check",
            "-i",
            ANSIBLE_DIR / "inventory" / "example.yml",
            ANSIBLE_DIR / "playbooks" / playbook,
        ],
        cwd=ANSIBLE_DIR,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.skipif(not (BIN / "ansible-lint").exists(), reason="needs ansible-lint")
def test_ansible_lint_production_profile(tmp_path):
    done = subprocess.run(
        [BIN / "ansible-lint", "--offline", "--profile", "production", "--nocolor"],
        cwd=ANSIBLE_DIR,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    assert "Profile 'production' was required, and it passed" in output, output[-2000:]
