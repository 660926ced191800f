"""Snapshots end to end: a real agent with BlazeFace keeps the face track's best frame and
delivers it as JPEG, uploaded to the controller over HTTP or published in MQTT chunks."""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np
import paho.mqtt.client as mqtt
import pytest

from agent.detect.detector import Detector
from agent.runtimes.litert import LiteRTRuntime
from controller.demo.waiting import wait_until
from ota.manifest import InputSpec, PostprocessSpec
from protocol.codec import decode, decode_snapshot_chunk
from protocol.messages import Ack, Snapshot
from tests.e2e.conftest import FLEET_DEVICE, KillFleet

pytestmark = pytest.mark.e2e


def video_size(fleet: KillFleet) -> tuple[int, int]:
    capture = cv2.VideoCapture(str(fleet.tmp_path / "astronaut.avi"))
    try:
        ok, frame = capture.read()
        assert ok
        return frame.shape[1], frame.shape[0]
    finally:
        capture.release()


def faces_in(jpeg: bytes, model_path: Path) -> tuple[tuple[int, int], int]:
    """The decoded JPEG's (width, height) and how many faces BlazeFace finds in it."""
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "not a decodable JPEG"
    runtime = LiteRTRuntime(num_threads=1)
    runtime.load(model_path)
    try:
        detector = Detector(
            runtime,
            InputSpec(width=128, height=128, color="rgb", mean=(127.5,) * 3, std=(127.5,) * 3),
            PostprocessSpec(kind="blazeface", score_threshold=0.6, iou_threshold=0.3),
            ["face"],
        )
        found = detector.detect(image)
    finally:
        runtime.close()
    return (image.shape[1], image.shape[0]), sum(1 for d in found if d.label == "face")


def face_track(fleet: KillFleet) -> tuple[str, int]:
    """(camera, track id) of a face track the controller has stored a detection of."""

    def found():
        rows = fleet.http.get("/api/detections", params={"device": FLEET_DEVICE}).json()
        return next(
            ((r["camera"], r["track_id"]) for r in rows if r["label"] == "face" and r["track_id"]),
            None,
        )

    return wait_until("a face detection at the controller", found, 60)


def test_snapshot_of_the_face_track_is_uploaded_and_served_as_a_jpeg_with_the_face(
    kill_fleet, build_blazeface, blazeface_model
):
    fleet = kill_fleet
    fleet.preinstall(build_blazeface(version=1).path)
    fleet.start_agent()
    wait_until("device registered", lambda: fleet.device().get("online"), 60)
    camera, track_id = face_track(fleet)

    response = fleet.http.post(
        f"/api/devices/{FLEET_DEVICE}/snapshot", json={"camera": camera, "track_id": track_id}
    )
    assert response.status_code == 202, response.text
    snapshot_id = response.json()["snapshot_id"]
    served = wait_until(
        "snapshot uploaded",
        lambda: (r := fleet.http.get(f"/api/snapshots/{snapshot_id}")).status_code == 200 and r,
        30,
    )
    assert served.headers["content-type"] == "image/jpeg"
    size, faces = faces_in(served.content, blazeface_model)
    assert size == video_size(fleet)
    assert faces >= 1
    assert (fleet.tmp_path / "controller" / "snapshots" / f"{snapshot_id}.jpg").is_file()

    # a track the agent never had is answered not_found, and nothing is uploaded for it
    with SnapListener(fleet) as listener:
        missing = fleet.http.post(
            f"/api/devices/{FLEET_DEVICE}/snapshot", json={"camera": camera, "track_id": 99999}
        ).json()
        ack = listener.ack(missing["cmd_id"])
    assert (ack.ok, ack.result) == (False, "not_found")
    assert fleet.http.get(f"/api/snapshots/{missing['snapshot_id']}").status_code == 404


def test_snapshot_without_upload_url_arrives_in_mqtt_chunks(
    kill_fleet, build_blazeface, blazeface_model
):
    fleet = kill_fleet
    fleet.preinstall(build_blazeface(version=1).path)
    fleet.start_agent()
    wait_until("device registered", lambda: fleet.device().get("online"), 60)
    camera, track_id = face_track(fleet)
    command = Snapshot(device=FLEET_DEVICE, camera=camera, track_id=track_id)
    with SnapListener(fleet) as listener:
        fleet.controller.commands.send(command)
        ack = listener.ack(command.id)
        assert (ack.ok, ack.result) == (True, "sent"), ack.detail
        total = int(ack.detail.split("chunks=")[1].split()[0])
        chunks = listener.chunks(command.id, total)
    jpeg = b"".join(chunks[i] for i in range(total))
    assert f"bytes={len(jpeg)}" in ack.detail
    size, faces = faces_in(jpeg, blazeface_model)
    assert size == video_size(fleet)
    assert faces >= 1


class SnapListener:
    """Acks and snapshot chunks of the fleet's device, awaited by command id."""

    def __init__(self, fleet: KillFleet) -> None:
        self.topics = fleet.controller.topics
        self._cond = threading.Condition()
        self._acks: dict[str, Ack] = {}
        self._chunks: dict[str, dict[int, bytes]] = {}
        self._client = fleet.observer.client
        ack_topic, snap_topic = self.topics.ack(FLEET_DEVICE), self.topics.snap(FLEET_DEVICE)
        self._topics = (ack_topic, snap_topic)
        self._client.message_callback_add(ack_topic, self._on_ack)
        self._client.message_callback_add(snap_topic, self._on_snap)

    def __enter__(self) -> SnapListener:
        return self

    def __exit__(self, *exc: object) -> None:
        for topic in self._topics:
            self._client.message_callback_remove(topic)

    def _on_ack(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        ack = decode(msg.payload, Ack)
        with self._cond:
            self._acks[ack.cmd_id] = ack
            self._cond.notify_all()

    def _on_snap(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        part = decode_snapshot_chunk(msg.payload)
        with self._cond:
            self._chunks.setdefault(part.cmd_id, {})[part.chunk.index] = part.chunk.data
            self._cond.notify_all()

    def ack(self, cmd_id: str, timeout: float = 30.0) -> Ack:
        with self._cond:
            assert self._cond.wait_for(lambda: cmd_id in self._acks, timeout), "no ack"
            return self._acks[cmd_id]

    def chunks(self, cmd_id: str, total: int, timeout: float = 30.0) -> dict[int, bytes]:
        with self._cond:
            assert self._cond.wait_for(
                lambda: len(self._chunks.get(cmd_id, {})) == total, timeout
            ), "snapshot chunks missing"
            return dict(self._chunks[cmd_id])
