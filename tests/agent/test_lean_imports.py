"""A lean agent: OpenCV, numpy and the vendor runtimes load only once a camera or a model
exists, httpx with the first HTTP transfer, cryptography with the first key, bundle or command
it checks, so an idle agent on a 1 GB board stays small."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("cv2", "numpy", "onnxruntime", "ai_edge_litert", "tflite_runtime", "openvino")
# what an idle agent, connected to its broker, does not need either (megabytes each)
DEFERRED = ("httpx", "cryptography", "pydantic_settings")

REPORT = """
import json, sys
print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))
"""


def loaded_after(
    code: str, cwd: Path | None = None, heavy: tuple[str, ...] = HEAVY + DEFERRED
) -> list[str]:
    script = code + REPORT.format(heavy=heavy)
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
    # and a deferred one, once the agent reaches for it
    code = "import agent.daemon\nfrom ota.keys import SigningKey\nSigningKey.generate()"
    assert loaded_after(code) == ["cryptography"]


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


def test_an_idle_agent_connected_to_its_broker_loads_none_of_them(tmp_path, mosquitto) -> None:
    # the agent as it runs: settings from a file, connected, publishing state and health
    config = tmp_path / "agent.yaml"
    config.write_text(
        json.dumps(
            {
                "device_id": "lean-2",
                "data_dir": str(tmp_path / "agent"),
                "mqtt": {"port": mosquitto.port, "keepalive": 5},
                "health_interval_s": 0.2,
                "tags": ["lean"],
            }
        )
    )
    code = f"""
import threading, time
from pathlib import Path
from agent.daemon import Agent
from agent.settings import AgentSettings
agent = Agent(AgentSettings.load(Path({str(config)!r})))
thread = threading.Thread(target=agent.run, daemon=True)
thread.start()
assert agent.session.connected.wait(30), "never connected"
time.sleep(1.0)  # state and a few health reports went out
agent.stop()
thread.join(30)
"""
    assert loaded_after(code) == []


def test_an_agent_running_blazeface_on_litert_loads_no_other_runtime(
    tmp_path, build_blazeface, trust, mosquitto
) -> None:
    # probing happened in a child process: only the chosen runtime's library is resident
    from controller.demo.sample_video import write_sample_video
    from ota.install import SlotStore

    built = build_blazeface(version=1)
    SlotStore(tmp_path / "agent" / "bundles").install(built.path, trust, built.manifest.created)
    video = write_sample_video(tmp_path / "sample.avi", fps=10, seconds_per_image=0.5)
    settings = {
        "device_id": "lean-3",
        "data_dir": str(tmp_path / "agent"),
        "mqtt": {"port": mosquitto.port, "keepalive": 5},
        "profile": "generic-x86-64",
        "cameras": [{"id": "cam0", "source": str(video.path), "loop": True}],
    }
    code = f"""
import threading, time
from agent.daemon import Agent
from agent.settings import AgentSettings
agent = Agent(AgentSettings(**{settings!r}))
thread = threading.Thread(target=agent.run, daemon=True)
thread.start()
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    model, workers = agent.pipeline.current(), agent.pipeline.workers
    if model is not None and workers and workers[0].counters.frames_processed > 5:
        break
    time.sleep(0.1)
assert model is not None and model.runtime == "litert", model
assert workers[0].counters.frames_processed > 5, "no frames went through the model"
agent.stop()
thread.join(30)
"""
    assert loaded_after(code) == ["ai_edge_litert", "cv2", "numpy"]
