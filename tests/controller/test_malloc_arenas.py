"""The controller process caps glibc's malloc arenas unless the environment already does."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

CHECK = "from controller.tuning import limit_malloc_arenas; print(limit_malloc_arenas())"


def run_check(**env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    done = subprocess.run(
        [sys.executable, "-c", CHECK],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_arenas_are_capped_on_glibc():
    assert run_check() == "True"


def test_an_arena_limit_in_the_environment_wins():
    assert run_check(MALLOC_ARENA_MAX="4") == "False"
