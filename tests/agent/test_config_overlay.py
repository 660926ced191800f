"""set-config over a real broker: applied live, persisted, kept across restarts; bad ones refused."""

from __future__ import annotations

import queue
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.config_overlay import (
    OVERLAY_FILE,
    ConfigRejected,
    apply_overlay,
    merge_patch,
    save_overlay,
    settings_with_overlay,
)
from agent.daemon import Agent
from agent.settings import AgentSettings
from controller.demo.sample_video import write_sample_video
from ota.commands import sign_command
from ota.keys import SigningKey
from ota.trust import TrustStore
from ota.trust_file import save_trust_store
from protocol.codec import decode, encode
from protocol.messages import Ack, Health, RestartPipeline, SetConfig, State
from protocol.topics import Topics

DEVICE = "cam-cfg"
# the controller's command key, which the device's trust store lists
COMMAND_KEY = SigningKey.generate()


class Operator:
    """A paho client that sends commands to one device and collects its acks and health."""

    def __init__(self, port: int) -> None:
        self.topics = Topics()
        self.acks: queue.Queue[Ack] = queue.Queue()
        self.health: queue.Queue[bytes] = queue.Queue()
        self.states: queue.Queue[State] = queue.Queue()
        subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="cfg-operator")
        self.client.on_connect = lambda c, *_: c.subscribe(
            [
                (self.topics.ack(DEVICE), 1),
                (self.topics.health(DEVICE), 0),
                (self.topics.state(DEVICE), 1),
            ]
        )
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert subscribed.wait(10), "operator never subscribed"

    def _on_message(self, client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if message.topic == self.topics.health(DEVICE):
            self.health.put(bytes(message.payload))
        elif message.topic == self.topics.state(DEVICE):
            if not message.retain:  # a retained one is from an earlier run
                self.states.put(decode(message.payload, State))
        else:
            self.acks.put(decode(message.payload, Ack))

    def send(self, command: SetConfig | RestartPipeline, timeout: float = 20) -> Ack:
        command = sign_command(command, [COMMAND_KEY], now=time.time(), ttl_s=60)
        self.client.publish(self.topics.cmd(DEVICE), encode(command), qos=1)
        while True:  # bounded by the queue timeout: acks of other commands are skipped
            ack = self.acks.get(timeout=timeout)
            if ack.cmd_id == command.id:
                return ack

    def wait_online(self, timeout: float = 20) -> None:
        """Wait for the agent's live `online` state: it is published after the agent's command
        subscription, so from then on commands reach it."""
        while self.states.get(timeout=timeout).status != "online":
            pass

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _start(settings: AgentSettings, operator: Operator) -> tuple[Agent, threading.Thread]:
    agent = Agent(settings)
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    operator.wait_online()
    return agent, thread


def _stop(agent: Agent, thread: threading.Thread) -> None:
    agent.stop()
    thread.join(30)
    assert not thread.is_alive()


@pytest.fixture
def base_settings(tmp_path: Path, mosquitto: Any) -> AgentSettings:
    trust = TrustStore.from_keys(
        [SigningKey.generate().public_key()], command_keys=[COMMAND_KEY.public_key()]
    )
    save_trust_store(trust, tmp_path / "trust.json")
    return AgentSettings(
        trust_path=tmp_path / "trust.json",
        device_id=DEVICE,
        data_dir=tmp_path / "agent",
        mqtt={"port": mosquitto.port, "keepalive": 5},
        profile="generic-x86-64",
        health_interval_s=600,
        # the sample videos these tests point cameras at are written here
        allowed_file_roots=[tmp_path],
    )


@pytest.fixture
def operator(mosquitto: Any) -> Iterator[Operator]:
    op = Operator(mosquitto.port)
    try:
        yield op
    finally:
        op.close()


def test_set_config_applies_persists_and_survives_a_restart(
    tmp_path: Path, base_settings: AgentSettings, operator: Operator
) -> None:
    video = write_sample_video(tmp_path / "door.avi", fps=10, seconds_per_image=0.5)
    agent, thread = _start(base_settings, operator)
    try:
        assert agent.pipeline.workers == []
        ack = operator.send(
            SetConfig(
                device=DEVICE,
                config={
                    "cameras": [{"id": "door", "source": str(video.path), "realtime": False}],
                    "det_flush_s": 0.25,
                },
            )
        )
        assert (ack.ok, ack.result) == (True, "applied"), ack.detail
        assert "cameras=door" in ack.detail
        # applied without a restart: the pipeline now reads the new camera
        [worker] = agent.pipeline.workers
        assert worker.camera.id == "door"
        assert worker.grabber.latest(0, timeout=10)[0] > 0
        assert agent.batcher.max_delay == 0.25
        saved = (base_settings.data_dir / OVERLAY_FILE).read_text()
        assert "door" in saved and "det_flush_s: 0.25" in saved

        ack = operator.send(RestartPipeline(device=DEVICE))
        assert (ack.ok, ack.result) == (True, "restarted") and "cameras=door" in ack.detail
    finally:
        _stop(agent, thread)

    # a new Agent object built from the same file settings starts with the change
    again, thread = _start(base_settings, operator)
    try:
        assert [c.id for c in again.settings.cameras] == ["door"]
        assert again.settings.det_flush_s == 0.25
        [worker] = again.pipeline.workers
        assert worker.camera.id == "door" and worker.grabber.latest(0, timeout=10)[0] > 0
    finally:
        _stop(again, thread)


@pytest.mark.parametrize(
    ("config", "reason", "mentions"),
    [
        ({"det_batch_max": 0}, "invalid_config", "det_batch_max"),
        ({"cameras": [{"id": "a b", "source": "0"}]}, "invalid_config", "cameras.0.id"),
        (
            {"cameras": [{"id": "x", "source": "0"}, {"id": "x", "source": "1"}]},
            "invalid_config",
            "unique",
        ),
        ({"mqtt": {"host": "elsewhere"}}, "not_settable", "mqtt"),
        ({"no_such_field": 1}, "not_settable", "no_such_field"),
    ],
)
def test_invalid_set_config_is_refused_and_changes_nothing(
    base_settings: AgentSettings,
    operator: Operator,
    config: dict[str, Any],
    reason: str,
    mentions: str,
) -> None:
    overlay = base_settings.data_dir / OVERLAY_FILE
    base_settings.data_dir.mkdir(parents=True)
    overlay.write_text("det_flush_s: 0.3\n")
    agent, thread = _start(base_settings, operator)
    try:
        ack = operator.send(SetConfig(device=DEVICE, config=config))
        assert (ack.ok, ack.result) == (False, reason)
        assert mentions in ack.detail
        assert overlay.read_text() == "det_flush_s: 0.3\n"
        assert agent.settings.det_flush_s == 0.3
        assert agent.settings.det_batch_max == base_settings.det_batch_max
    finally:
        _stop(agent, thread)


def test_health_message_carries_camera_state_and_device_sources(
    base_settings: AgentSettings, operator: Operator
) -> None:
    settings = AgentSettings.model_validate(
        {
            **base_settings.model_dump(),
            "health_interval_s": 0.5,
            "health_sources": ["vcgencmd_throttled", "tegrastats"],
            "cameras": [{"id": "gone", "source": "/nonexistent/clip.avi"}],
        }
    )
    agent, thread = _start(settings, operator)
    try:
        health = decode(operator.health.get(timeout=15), Health)
        [camera] = health.cameras
        assert camera.camera == "gone" and not camera.connected
        assert "does not exist" in camera.last_error and camera.since is not None
        # this host has neither tool: both are named, nothing is guessed
        assert "tegrastats not found" in health.unavailable["tegrastats"]
        assert "vcgencmd not found" in health.unavailable["vcgencmd_throttled"]
        assert health.throttling == {}
    finally:
        _stop(agent, thread)


def test_patches_merge_and_a_broken_overlay_file_is_ignored_at_start(
    base_settings: AgentSettings,
) -> None:
    merged = merge_patch({"det_flush_s": 0.3}, {"det_batch_max": 7})
    assert merged == {"det_flush_s": 0.3, "det_batch_max": 7}
    with pytest.raises(ConfigRejected):
        merge_patch(merged, {"health_interval_s": -1})
    base_settings.data_dir.mkdir(parents=True)
    (base_settings.data_dir / OVERLAY_FILE).write_text("det_batch_max: [not, a, number]\n")
    assert settings_with_overlay(base_settings) == base_settings


def _local(tmp_path: Path, cameras: list[dict[str, Any]] | None = None) -> AgentSettings:
    return AgentSettings(
        device_id=DEVICE,
        data_dir=tmp_path / "agent",
        allowed_file_roots=[tmp_path / "videos"],
        cameras=cameras or [],
        max_cameras=3,
    )


@pytest.mark.parametrize(
    "source",
    [
        "0",
        "/dev/video2",
        "rtsp://10.0.0.7:554/stream1",
        "rtsps://cam.local/live",
        "http://cam.local/mjpeg",
        "https://cam.local:8443/video.mjpg",
    ],
)
def test_remote_cameras_may_name_v4l2_rtsp_and_mjpeg_sources(tmp_path: Path, source: str) -> None:
    settings = apply_overlay(_local(tmp_path), {"cameras": [{"id": "c", "source": source}]})
    assert [c.source for c in settings.cameras] == [source]


def test_remote_cameras_may_name_files_under_the_allowed_roots(tmp_path: Path) -> None:
    clip = tmp_path / "videos" / "sub" / "clip.avi"
    settings = apply_overlay(_local(tmp_path), {"cameras": [{"id": "c", "source": str(clip)}]})
    assert settings.cameras[0].source == str(clip)
    with pytest.raises(ConfigRejected) as caught:
        apply_overlay(_local(tmp_path), {"cameras": [{"id": "c", "source": "videos/clip.avi"}]})
    assert caught.value.reason == "source_refused"


def test_pipelines_and_templates_from_the_local_file_stay_settable_as_they_are(
    tmp_path: Path,
) -> None:
    pipeline = "nvarguscamerasrc ! nvvidconv ! appsink"
    local = _local(
        tmp_path,
        [
            {"id": "csi", "source": pipeline},
            {"id": "prof", "source": "profile", "template": {"sensor_id": 1}},
        ],
    )
    # the operator changes a filter: the local pipeline and template come back unchanged
    patch = {
        "cameras": [
            {"id": "csi", "source": pipeline, "filters": {"min_score": 0.7}},
            {"id": "prof", "source": "profile", "template": {"sensor_id": 1}},
        ]
    }
    settings = apply_overlay(local, patch)
    assert settings.cameras[0].filters.min_score == 0.7
    # but not a changed template, nor the local pipeline under another camera id
    for camera in (
        {"id": "prof", "source": "profile", "template": {"sensor_id": 2}},
        {"id": "other", "source": pipeline},
    ):
        with pytest.raises(ConfigRejected) as caught:
            apply_overlay(local, {"cameras": [camera]})
        assert caught.value.reason == "pipeline_refused"


def test_a_saved_overlay_with_a_pipeline_is_ignored_at_start(tmp_path: Path) -> None:
    local = _local(tmp_path)
    save_overlay(local.data_dir, {"cameras": [{"id": "x", "source": "a ! filesink"}]})
    assert settings_with_overlay(local).cameras == []


def test_the_data_folder_is_made_private_even_when_it_exists(
    base_settings: AgentSettings, operator: Operator
) -> None:
    base_settings.data_dir.mkdir(mode=0o755)
    agent, thread = _start(base_settings, operator)
    try:
        assert stat.S_IMODE(base_settings.data_dir.stat().st_mode) == 0o700
    finally:
        _stop(agent, thread)
