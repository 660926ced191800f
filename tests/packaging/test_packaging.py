"""`python -m build` and `twine check` on a copy of the source, then the wheel installed with
only the `cli` extra in a fresh virtual environment: `edgefleet` works there without any server
package, and `edgefleet-agent` names the extra it lacks instead of a traceback.

The build is isolated, so it fetches its build backend (setuptools, wheel) from the package
index; the install fetches the `cli` extra's packages, pinned by constraints.txt.
"""

from __future__ import annotations

import email
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "README.md", "edgefleet_launcher.py")
PACKAGES = ("protocol", "ota", "device_profiles", "agent", "controller")
SERVER_DISTRIBUTIONS = ("fastapi", "starlette", "uvicorn", "sqlalchemy", "alembic", "psycopg")


def clean_env() -> dict[str, str]:
    """The environment without this checkout's settings or import paths."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("EDGEFLEET_", "PYTHON", "VIRTUAL_ENV"))
    }


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """sdist and wheel of a clean copy of the source (the checkout is left untouched)."""
    work = tmp_path_factory.mktemp("build")
    src = work / "src"
    src.mkdir()
    for name in SOURCES:
        shutil.copy2(ROOT / name, src / name)
    for package in PACKAGES:
        shutil.copytree(
            ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    out = work / "dist"
    done = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(src)],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def wheel_of(dist: Path) -> Path:
    (wheel,) = dist.glob("edgefleet-*.whl")
    return wheel


def test_sdist_and_wheel_pass_twine_check(dist):
    (sdist,) = dist.glob("edgefleet-*.tar.gz")
    wheel = wheel_of(dist)
    twine = Path(sys.executable).with_name("twine")
    done = subprocess.run(
        [str(twine), "check", "--strict", str(sdist), str(wheel)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("PASSED") == 2

    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        meta = email.message_from_bytes(
            archive.read(next(n for n in names if n.endswith(".dist-info/METADATA")))
        )
        scripts = archive.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "edgefleet_launcher.py" in names
    assert "controller/migrations/env.py" in names
    assert any(n.startswith("device_profiles/") and n.endswith(".yaml") for n in names)
    assert not any(n.startswith("tests/") for n in names)
    assert "edgefleet = edgefleet_launcher:edgefleet" in scripts
    assert "edgefleet-agent = edgefleet_launcher:edgefleet_agent" in scripts

    assert meta["Requires-Python"] == ">=3.11"
    extras = set(meta.get_all("Provides-Extra") or [])
    assert {"cli", "agent", "controller", "litert", "onnx", "openvino", "nvml", "all"} <= extras
    cli = [r for r in meta.get_all("Requires-Dist") or [] if 'extra == "cli"' in r]
    assert cli and not [r for r in cli if r.lower().startswith(SERVER_DISTRIBUTIONS)]


def test_the_cli_extra_alone_runs_edgefleet_and_the_agent_names_its_extra(dist, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-c",
            str(ROOT / "constraints.txt"),
            f"edgefleet[cli] @ {wheel_of(dist).as_uri()}",
        ],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=240,
    )
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    site = next((venv / "lib").glob("python3*/site-packages"))
    installed = {p.name.split("-")[0].lower() for p in site.glob("*.dist-info")}
    assert "edgefleet" in installed and "httpx" in installed and "rich" in installed
    assert not installed & {*SERVER_DISTRIBUTIONS, "paho_mqtt", "numpy", "pydantic_settings"}

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(venv / "bin" / argv[0]), *argv[1:]],
            capture_output=True,
            text=True,
            cwd=tmp_path,  # not the checkout: only what was installed is importable
            env=clean_env(),
            timeout=60,
        )

    helped = run("edgefleet", "--help")
    assert helped.returncode == 0, helped.stderr
    assert helped.stdout.startswith("usage: edgefleet")

    agent = run("edgefleet-agent", "run", "--device-id", "cam-a", "--data-dir", str(tmp_path / "a"))
    assert agent.returncode == 2, agent.stderr
    assert "pip install 'edgefleet[agent]'" in agent.stderr
    assert "Traceback" not in agent.stderr and agent.stderr.count("\n") == 1
    assert not (tmp_path / "a").exists()

    server = run("edgefleet", "controller", "run")
    assert server.returncode == 2
    assert "pip install 'edgefleet[controller]'" in server.stderr
    assert "Traceback" not in server.stderr
