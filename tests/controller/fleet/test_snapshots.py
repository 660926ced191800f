"""Snapshot requests and uploads through the API: only JPEGs, only for ids the controller made."""

from __future__ import annotations

import os
import time

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from controller.api.security import AuthContext
from controller.api.snapshots import snapshots_router
from controller.auth.transfer import TransferTokens
from controller.db import Device, make_engine, session_factory, upgrade_database
from controller.fleet.snapshots import SnapshotRefused, SnapshotRequests, SnapshotStore
from controller.mqtt.commands import CommandSender
from controller.settings import AuthSettings
from protocol.codec import decode_command
from protocol.messages import TRANSFER_TOKEN_HEADER, Snapshot
from protocol.topics import Topics

JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 100 + b"\xff\xd9"


class Recorder:
    """Stands in for the publisher: keeps what would have been published."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    def publish(self, topic: str, payload: bytes, *, timeout: float = 30.0) -> None:
        self.sent.append((topic, payload))


@pytest.fixture
def api(tmp_path, db_url):
    upgrade_database(db_url)
    engine = make_engine(db_url)
    sessions = session_factory(engine)
    with sessions.begin() as session:
        session.add(Device(id="cam-a", first_seen=time.time(), last_seen=time.time()))
    recorder = Recorder()
    store = SnapshotStore(tmp_path / "snapshots", max_bytes=4096)
    tokens = TransferTokens(os.urandom(32))
    requests = SnapshotRequests(
        store,
        sessions,
        CommandSender(recorder, Topics()),
        lambda: "http://controller.test:8080/",
        tokens,
    )
    app = FastAPI()
    # the uploads check the transfer token the command carried (operators are not involved)
    app.state.auth = AuthContext(sessions, AuthSettings(), tokens)
    app.include_router(snapshots_router(requests, store))
    with TestClient(app) as client:
        yield client, recorder.sent, store
    engine.dispose()


def test_a_request_sends_the_command_and_the_uploaded_jpeg_is_served(api):
    client, sent, store = api
    response = client.post("/api/devices/cam-a/snapshot", json={"camera": "cam0", "track_id": 4})
    assert response.status_code == 202, response.text
    body = response.json()
    snapshot_id = body["snapshot_id"]
    [(topic, payload)] = sent
    command = decode_command(payload)
    assert topic == Topics().cmd("cam-a")
    assert isinstance(command, Snapshot) and command.id == body["cmd_id"]
    assert (command.camera, command.track_id) == ("cam0", 4)
    assert command.upload_url == f"http://controller.test:8080/api/snapshots/{snapshot_id}"
    device = {TRANSFER_TOKEN_HEADER: command.upload_token}

    assert client.get(f"/api/snapshots/{snapshot_id}").json()["detail"] == (
        "snapshot not uploaded yet"
    )
    assert client.put(f"/api/snapshots/{snapshot_id}", content=JPEG).status_code == 401
    assert (
        client.put(f"/api/snapshots/{snapshot_id}", content=JPEG, headers=device).status_code == 201
    )
    served = client.get(f"/api/snapshots/{snapshot_id}")
    assert served.status_code == 200
    assert served.headers["content-type"] == "image/jpeg" and served.content == JPEG
    assert sorted(p.name for p in store.root.iterdir()) == [f"{snapshot_id}.jpg"]
    # once only
    assert (
        client.post(f"/api/snapshots/{snapshot_id}", content=JPEG, headers=device).status_code
        == 409
    )


def test_uploads_that_are_not_asked_for_too_big_or_not_jpeg_are_refused(api):
    client, sent, store = api
    snapshot_id = client.post(
        "/api/devices/cam-a/snapshot", json={"camera": "cam0", "track_id": 1}
    ).json()["snapshot_id"]
    command = decode_command(sent[-1][1])
    assert isinstance(command, Snapshot)
    device = {TRANSFER_TOKEN_HEADER: command.upload_token or ""}
    url = f"/api/snapshots/{snapshot_id}"
    assert client.post(url, content=b"GIF89a...", headers=device).status_code == 415
    assert client.post(url, content=b"", headers=device).status_code == 415
    too_big = JPEG + b"\x00" * 5000
    assert client.post(url, content=too_big, headers=device).status_code == 413
    never_asked = "0" * 32
    # the token is bound to its snapshot id: it opens no other
    assert (
        client.post(f"/api/snapshots/{never_asked}", content=JPEG, headers=device).status_code
        == 401
    )
    # ids are the controller's own hex; anything else never reaches the file system
    for bad in ("..%2F..%2Fetc%2Fpasswd", "ABC", "x" * 32):
        refused = client.post(f"/api/snapshots/{bad}", content=JPEG, headers=device)
        assert refused.status_code in (401, 404, 422)
        assert client.get(f"/api/snapshots/{bad}").status_code in (404, 422)
    assert sorted(p.suffix for p in store.root.iterdir()) == [".pending"]


def test_unknown_devices_and_bad_bodies_are_refused(api):
    client, sent, _ = api
    ok = {"camera": "cam0", "track_id": 1}
    assert client.post("/api/devices/nope-1/snapshot", json=ok).status_code == 404
    assert client.post("/api/devices/cam-a/snapshot", json={"camera": "c/0"}).status_code == 422
    bad_track = {"camera": "cam0", "track_id": -1}
    assert client.post("/api/devices/cam-a/snapshot", json=bad_track).status_code == 422
    assert sent == []


def test_a_pending_id_expires(tmp_path):
    store = SnapshotStore(tmp_path, pending_s=60.0)
    snapshot_id = store.new()
    assert store.pending(snapshot_id)
    old = time.time() - 61
    os.utime(tmp_path / f"{snapshot_id}.pending", (old, old))
    assert not store.pending(snapshot_id)
    with pytest.raises(SnapshotRefused) as refused:
        store.store(snapshot_id, JPEG)
    assert refused.value.status == 404
