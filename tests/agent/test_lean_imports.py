"""A lean agent: OpenCV, numpy and the vendor runtimes load only once a camera or a model
exists, so an idle agent on a 1 GB board stays small."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("cv2", "numpy", "onnxruntime", "ai_edge_litert", "tflite_runtime", "openvino")

REPORT = """
import json, sys
print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))
"""


def loaded_after(code: str, cwd: Path | None = None) -> list[str]:
    script = code + REPORT.format(heavy=HEAVY)
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        cwd=cwd,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return list(json.loads(result.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize(
    "module",
    ["agent.daemon", "agent.cli", "agent.selection", "agent.deploy.loader", "agent.settings"],
)
def test_importing_the_agent_loads_no_opencv_numpy_or_runtime(module) -> None:
    assert loaded_after(f"import {module}") == []


def test_the_check_sees_a_heavy_import() -> None:
    assert loaded_after("import agent.daemon\nimport agent.detect.detector") == ["cv2", "numpy"]


def test_an_idle_agent_without_camera_or_bundle_loads_none_of_them(tmp_path) -> None:
    # probing the runtimes happens in a child process: their libraries stay out of the agent
    code = f"""
from pathlib import Path
from agent.daemon import Agent
from agent.settings import AgentSettings
agent = Agent(AgentSettings(device_id="lean-1", data_dir=Path({str(tmp_path)!r})))
assert any(p.available for p in agent.probes), agent.probes
agent.outbox.close()
"""
    assert loaded_after(code) == []
