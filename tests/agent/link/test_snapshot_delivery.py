"""Snapshot delivery: a kept frame encoded as JPEG, uploaded over HTTP or sent in chunks."""

from __future__ import annotations

import threading

import cv2
import httpx
import numpy as np

from agent.link.snapshots import SnapshotDelivery
from agent.pipeline.snapshots import SnapshotKeeper
from protocol.codec import decode_snapshot_chunk
from protocol.messages import Snapshot


def keeper_with_frame() -> tuple[SnapshotKeeper, np.ndarray]:
    rng = np.random.default_rng(1)
    # noise compresses badly, so the JPEG spans several chunks
    image = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
    keeper = SnapshotKeeper()
    keeper.offer("cam0", 7, 0.9, image, 10.0)
    return keeper, image


def decoded_size(jpeg: bytes) -> tuple[int, int]:
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image.shape[1], image.shape[0]


def test_upload_posts_the_jpeg_and_acks_uploaded():
    keeper, _ = keeper_with_frame()
    received: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        received.append(request)
        return httpx.Response(201)

    delivery = SnapshotDelivery(
        keeper, lambda chunk: None, lambda *a: None, transport=httpx.MockTransport(handler)
    )
    command = Snapshot(device="dev-1", camera="cam0", track_id=7, upload_url="http://c/api/s/1")
    ok, result, detail = delivery.deliver(command)
    assert (ok, result) == (True, "uploaded")
    assert "width=320 height=240" in detail
    assert len(received) == 1 and received[0].method == "POST"
    assert received[0].headers["content-type"] == "image/jpeg"
    assert decoded_size(received[0].content) == (320, 240)


def test_a_refused_or_unreachable_upload_acks_upload_failed():
    keeper, _ = keeper_with_frame()
    command = Snapshot(device="dev-1", camera="cam0", track_id=7, upload_url="http://c/x")
    refused = SnapshotDelivery(
        keeper,
        lambda chunk: None,
        lambda *a: None,
        transport=httpx.MockTransport(lambda r: httpx.Response(413)),
    )
    ok, result, detail = refused.deliver(command)
    assert (ok, result) == (False, "upload_failed") and "HTTP 413" in detail

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    unreachable = SnapshotDelivery(
        keeper, lambda chunk: None, lambda *a: None, transport=httpx.MockTransport(down)
    )
    assert unreachable.deliver(command)[:2] == (False, "upload_failed")


def test_without_url_the_jpeg_goes_out_in_chunks_that_reassemble():
    keeper, _ = keeper_with_frame()
    sent: list[bytes] = []
    delivery = SnapshotDelivery(keeper, sent.append, lambda *a: None, chunk_bytes=16 * 1024)
    command = Snapshot(device="dev-1", camera="cam0", track_id=7)
    ok, result, detail = delivery.deliver(command)
    assert (ok, result) == (True, "sent")
    chunks = [decode_snapshot_chunk(p) for p in sent]
    assert len(chunks) > 1 and f"chunks={len(chunks)}" in detail
    assert {c.cmd_id for c in chunks} == {command.id}
    assert [c.chunk.index for c in chunks] == list(range(len(chunks)))
    assert {c.chunk.total for c in chunks} == {len(chunks)}
    jpeg = b"".join(c.chunk.data for c in chunks)
    assert f"bytes={len(jpeg)}" in detail
    assert decoded_size(jpeg) == (320, 240)


def test_an_unknown_track_is_not_found_and_the_worker_acks_every_command():
    keeper, _ = keeper_with_frame()
    acks: list[tuple[str, bool, str, str]] = []
    done = threading.Event()

    def ack(cmd_id: str, ok: bool, result: str, detail: str) -> None:
        acks.append((cmd_id, ok, result, detail))
        if len(acks) == 2:
            done.set()

    delivery = SnapshotDelivery(keeper, lambda chunk: None, ack)
    missing = Snapshot(device="dev-1", camera="cam0", track_id=99)
    present = Snapshot(device="dev-1", camera="cam0", track_id=7)
    delivery.submit(missing)
    delivery.submit(present)
    assert done.wait(10)
    delivery.stop()
    assert acks[0][:3] == (missing.id, False, "not_found")
    assert acks[1][:3] == (present.id, True, "sent")
