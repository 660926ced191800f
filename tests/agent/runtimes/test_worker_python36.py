"""The worker runs under the device's own Python, as old as 3.6 (JetPack 4.6): a static check
(vermin) proves its code needs nothing newer. No 3.6 interpreter exists on the test machine, so
this check is the proof; the worker tests run the same code as a real separate process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import agent.runtimes.worker.program as program

WORKER_CODE = Path(program.__file__)
OLDEST_PYTHON = "3.6"


def vermin(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from vermin import main; sys.exit(main())",
            f"--target={OLDEST_PYTHON}-",
            "--violations",
            "--eval-annotations",
            "--no-tips",
            "--processes=1",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_worker_program_needs_nothing_newer_than_python_3_6() -> None:
    result = vermin(WORKER_CODE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Minimum required versions: {OLDEST_PYTHON}" in result.stdout or (
        "Minimum required versions: 3.5" in result.stdout
    ), result.stdout


def test_the_check_fails_on_code_newer_than_3_6(tmp_path) -> None:
    newer = tmp_path / "newer.py"
    newer.write_text("import dataclasses\nif (n := 1):\n    pass\n")
    result = vermin(newer)
    assert result.returncode != 0
    assert "Target versions not met" in result.stdout


def test_the_worker_program_imports_only_stdlib_numpy_and_vendor_modules() -> None:
    # agent code may need 3.11 and pydantic: the worker must not import any of it
    text = WORKER_CODE.read_text()
    for forbidden in ("from agent", "import agent", "from protocol", "pydantic", "__future__"):
        assert forbidden not in text, forbidden
