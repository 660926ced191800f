"""The CLI where only its own packages are installed: API commands work, commands that need an
extra say which one to install."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from controller.demo.broker import free_port

ROOT = Path(__file__).resolve().parents[3]
# the server's, the demo's and the converters' packages: none is a CLI dependency
NOT_INSTALLED = (
    "fastapi",
    "starlette",
    "uvicorn",
    "sqlalchemy",
    "alembic",
    "psycopg",
    "paho",
    "amqtt",
    "pydantic_settings",
    "numpy",
    "cv2",
    "skimage",
    "openvino",
)
RUN_WITHOUT = f"""
import importlib.abc
import sys

class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {NOT_INSTALLED!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, NotInstalled())
from controller.cli.main import main
code = main(sys.argv[1:])
leaked = sorted(m for m in sys.modules if m.split(".")[0] in {NOT_INSTALLED!r})
if leaked:
    print("imported:", leaked, file=sys.stderr)
    code = 99
sys.exit(code)
"""


def edgefleet_without_extras(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", RUN_WITHOUT, *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


def test_help_and_api_commands_need_no_server_packages():
    assert edgefleet_without_extras("--help").returncode == 0
    done = edgefleet_without_extras("--api", f"http://127.0.0.1:{free_port()}", "devices")
    # it got as far as asking the controller
    assert done.returncode == 3, done.stderr
    assert done.stderr.startswith("edgefleet: cannot reach the controller at "), done.stderr


def test_controller_run_without_the_controller_extra_names_it(tmp_path):
    done = edgefleet_without_extras("controller", "run")
    assert done.returncode == 2, done.stderr
    assert "pip install 'edgefleet[controller]'" in done.stderr
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1


def test_demo_without_its_extras_names_them(tmp_path):
    done = edgefleet_without_extras("demo", "--workdir", str(tmp_path))
    assert done.returncode == 2, done.stderr
    assert "pip install 'edgefleet[controller,demo]'" in done.stderr
    assert not any(tmp_path.iterdir())
