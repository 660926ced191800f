"""The agent as its unit runs it, with PYTHONOPTIMIZE=2: no docstrings, no asserts.

Every module of the device side imports under -OO, no code there leans on what -OO strips
(an `assert` that guards something, a `__doc__` read), and a real agent comes online.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

from controller.demo.processes import spawn_agent, stop_agent, write_agent_config
from protocol.events import DeviceStatus
from tests.e2e.conftest import Observer

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("agent", "ota", "protocol", "device_profiles")

IMPORT_ALL = """
import importlib, json, pkgutil, sys

def fail(name):
    raise ImportError(f"walking {name} failed")

imported = []
for package in sys.argv[1:]:
    root = importlib.import_module(package)
    imported.append(package)
    for info in pkgutil.walk_packages(root.__path__, package + ".", onerror=fail):
        importlib.import_module(info.name)
        imported.append(info.name)
print(json.dumps([sys.flags.optimize, imported]))
"""


def optimized(*args: str) -> str:
    """What `python -OO ARGS` prints, run from the checkout; fails the test if it fails."""
    done = subprocess.run(
        [sys.executable, "-OO", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_every_device_module_imports_without_docstrings():
    output = optimized("-c", IMPORT_ALL, *PACKAGES)
    optimize, imported = json.loads(output.strip().splitlines()[-1])
    assert optimize == 2
    assert {"agent.cli", "agent.daemon", "ota.verify", "protocol.messages"} <= set(imported)
    assert "agent.runtimes.worker.program" in imported


def test_no_device_code_relies_on_what_optimisation_strips():
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                relative = path.relative_to(ROOT)
                if isinstance(node, ast.Assert):
                    found.append(f"{relative}:{node.lineno}: assert")
                elif isinstance(node, ast.Name | ast.Attribute) and "__doc__" in (
                    getattr(node, "id", None),
                    getattr(node, "attr", None),
                ):
                    found.append(f"{relative}:{node.lineno}: __doc__")
                elif isinstance(node, ast.Name) and node.id == "__debug__":
                    found.append(f"{relative}:{node.lineno}: __debug__")
    assert found == []


def test_cli_help_has_a_description_under_optimisation():
    assert "run the device daemon" in optimized("-m", "agent.cli", "--help").lower()


def test_agent_run_with_pythonoptimize_comes_online(tmp_path, mosquitto):
    agent_dir = tmp_path / "agent"
    agent_dir.mkdir()
    device = "optimized-01"
    config = write_agent_config(
        agent_dir,
        {
            "device_id": device,
            "data_dir": str(agent_dir),
            "mqtt": {"host": "127.0.0.1", "port": mosquitto.port, "keepalive": 5},
            "cameras": [],
        },
    )
    env = {**os.environ, "PYTHONOPTIMIZE": "2"}
    observer = Observer(mosquitto.port, device)
    log = tmp_path / "agent.log"
    agent = spawn_agent(config, log, env)
    try:
        observer.wait(
            "online",
            lambda seen: any(s.status == DeviceStatus.ONLINE for s in seen.states),
            30,
        )
        assert agent.poll() is None
    except BaseException:
        print(log.read_text()[-4000:])
        raise
    finally:
        stop_agent(agent)
        observer.close()
