"""Attacks on a device through its commands and its bundle topic: forged chunks and offers,
URLs that lead away from the controller, camera sources that write files; and a flood of
chunk requests at the controller. Each is refused with its reason, and nothing the device
keeps on disk (slots, downloads, trust store, settings overlay) changes.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from hashlib import sha256
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.config_overlay import (
    OVERLAY_FILE,
    ConfigRejected,
    apply_overlay,
    load_overlay,
    merge_patch,
    save_overlay,
)
from agent.deploy.deployer import REREQUEST_INTERVAL_S
from agent.link.origin import ControllerOrigin
from agent.link.snapshots import SnapshotDelivery
from agent.pipeline.snapshots import SnapshotKeeper
from agent.settings import AgentSettings
from controller.bundles.chunks import ChunkRateLimit, ChunkServer
from controller.bundles.repository import BundleRepository, release_verifier
from controller.db import make_engine, session_factory, upgrade_database
from controller.demo.waiting import wait_until
from controller.mqtt.session import Publisher
from controller.settings import MqttSettings
from ota.keys import SigningKey
from ota.trust import TrustStore
from ota.trust_file import save_trust_store
from protocol.codec import Chunk
from protocol.events import TransferReason
from protocol.messages import Snapshot
from protocol.topics import Topics
from tests.security.device_harness import (
    CHUNK,
    DEVICE,
    Device,
    chunks_of,
    good_bundle_at,
    make_device,
    offer_for,
    random_files,
)

CONTROLLER = "https://controller.fleet.example:8443"


@pytest.fixture
def device(tmp_path: Path, trust: TrustStore) -> Device:
    return make_device(tmp_path, trust, origin=ControllerOrigin(CONTROLLER))


@pytest.fixture
def bundle(tmp_path: Path, release_key: SigningKey) -> Path:
    return good_bundle_at(tmp_path / "good.bundle", random_files(), release_key)


def refused_offer(device: Device, **changes: Any) -> str:
    """Offer a bundle with `changes`; it must fail at once, leaving the data folder as it was."""
    before = device.disk()
    command = offer_for(device.root.parent / "good.bundle", **changes)
    device.deployer.on_deploy(command)
    assert device.disk() == before
    assert not device.deployer.http.active(command.bundle.digest)
    assert device.recorder.subscribed == set()
    last = device.recorder.last()
    assert last.kind == "failed" and last.reason is not None
    return last.reason


# ---- the bundle topic ------------------------------------------------------------------------


def test_garbage_chunk_is_dropped_alone_and_the_deploy_completes(
    device: Device, bundle: Path
) -> None:
    """Garbage chunk: anyone who can publish on bundle/<digest>/chunk sends junk first."""
    command = offer_for(bundle)
    digest = command.bundle.digest
    device.deployer.on_deploy(command)
    chunks = chunks_of(bundle)
    junk = Chunk(index=1, total=len(chunks), data=os.urandom(len(chunks[1].data)))
    device.deployer.on_chunk(digest, junk)
    assert device.deployer.chunks_dropped == 1
    # asked for again, that chunk alone
    [again] = [e for e in device.recorder.of("chunk_request") if e.message == "1 dropped chunks"]
    assert [(r.start, r.end) for r in again.missing] == [(1, 1)]
    for chunk in chunks:
        device.deployer.on_chunk(digest, chunk)
    assert device.recorder.last().kind == "running"
    assert device.recorder.of("failed") == []
    current = device.store.current()
    assert current is not None and current.digest == digest


def test_garbage_chunk_flood_asks_again_at_most_once_per_interval(
    device: Device, bundle: Path
) -> None:
    """Garbage flood: forged chunks by the hundred, to make the device flood chunk requests."""
    command = offer_for(bundle)
    digest = command.bundle.digest
    device.deployer.on_deploy(command)
    chunks = chunks_of(bundle)
    asked_before = len(device.recorder.of("chunk_request"))
    for n in range(200):
        index = n % len(chunks)
        junk = Chunk(index=index, total=len(chunks), data=os.urandom(len(chunks[index].data)))
        device.deployer.on_chunk(digest, junk)
        device.deployer.tick()
    assert device.deployer.chunks_dropped == 200
    assert len(device.recorder.of("chunk_request")) - asked_before == 1
    assert not (device.downloads / f"{digest}.part").exists()
    # once the interval has passed, the dropped ones still missing are asked for together
    time.sleep(REREQUEST_INTERVAL_S)
    device.deployer.tick()
    again = device.recorder.of("chunk_request")[-1]
    assert [(r.start, r.end) for r in again.missing] == [(i, i) for i in range(len(chunks))]
    for chunk in chunks:
        device.deployer.on_chunk(digest, chunk)
    assert device.recorder.last().kind == "running"


def test_forged_chunk_after_the_real_one_changes_nothing(device: Device, bundle: Path) -> None:
    """Late forgery: a forged copy of a chunk the device already holds."""
    command = offer_for(bundle)
    digest = command.bundle.digest
    device.deployer.on_deploy(command)
    chunks = chunks_of(bundle)
    device.deployer.on_chunk(digest, chunks[0])
    part = device.downloads / f"{digest}.part"
    before = part.read_bytes()
    device.deployer.on_chunk(digest, Chunk(index=0, total=len(chunks), data=b"\xff" * CHUNK))
    assert part.read_bytes() == before
    for chunk in chunks[1:]:
        device.deployer.on_chunk(digest, chunk)
    assert device.recorder.last().kind == "running"


def test_offer_whose_chunk_digest_list_does_not_fit_is_refused(
    device: Device, bundle: Path
) -> None:
    """Forged chunk digests: a list of the wrong length, to make every real chunk look bad."""
    reason = refused_offer(device, chunk_digests=("0" * 64,))
    assert reason == TransferReason.BAD_OFFER.value


def test_huge_chunks_count_is_refused_before_anything_is_allocated(
    device: Device, bundle: Path
) -> None:
    """Huge chunks count: one-byte chunks so the received-chunks map fills memory."""
    reason = refused_offer(
        device, size=1 << 30, chunk_size=1, chunks=1 << 30, chunk_digests=(), digests=False
    )
    assert reason == TransferReason.BAD_OFFER.value


def test_size_lie_beyond_the_largest_bundle_is_refused(
    tmp_path: Path, trust: TrustStore, bundle: Path
) -> None:
    """Size lie: an offer announcing more bytes than any bundle this device takes."""
    device = make_device(tmp_path, trust, max_bundle_bytes=1 << 20)
    size = 2 << 20
    reason = refused_offer(device, size=size, chunks=-(-size // CHUNK), chunk_digests=())
    assert reason == TransferReason.OFFER_TOO_LARGE.value


def test_offer_larger_than_the_free_disk_is_refused(
    tmp_path: Path, trust: TrustStore, bundle: Path
) -> None:
    """Disk filler: an offer bigger than the free space, to fill the data folder's disk."""
    device = make_device(tmp_path, trust, disk_free=lambda path: 1000)
    assert refused_offer(device) == TransferReason.NO_DISK_SPACE.value


def test_offer_url_to_a_foreign_host_is_refused(device: Device, bundle: Path) -> None:
    """Foreign download: an offer URL on a host that is not the controller."""
    url = f"https://attacker.example/b/{sha256(bundle.read_bytes()).hexdigest()}"
    assert refused_offer(device, url=url) == TransferReason.FOREIGN_ORIGIN.value


def test_offer_url_on_another_port_of_the_controller_is_refused(
    device: Device, bundle: Path
) -> None:
    """Port switch: the controller's host name, another port (another service on it)."""
    url = "https://controller.fleet.example:9000/api/bundles/x/file"
    assert refused_offer(device, url=url) == TransferReason.FOREIGN_ORIGIN.value


def test_offer_url_that_hides_a_host_behind_userinfo_is_refused(
    device: Device, bundle: Path
) -> None:
    """Userinfo trick: the controller's name as user name, the attacker's as host."""
    url = "https://controller.fleet.example:8443@attacker.example/api/bundles/x/file"
    assert refused_offer(device, url=url) == TransferReason.FOREIGN_ORIGIN.value


def test_plain_http_to_the_controller_host_is_refused_when_https_is_set(
    device: Device, bundle: Path
) -> None:
    """Downgrade: the controller's host over plain http when its origin is https."""
    url = "http://controller.fleet.example:8443/api/bundles/x/file"
    assert refused_offer(device, url=url) == TransferReason.FOREIGN_ORIGIN.value


# ---- snapshot uploads ------------------------------------------------------------------------


def _snapshot_delivery(requests: list[httpx.Request]) -> SnapshotDelivery:
    keeper = SnapshotKeeper()
    frame = np.random.default_rng(3).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    keeper.offer("cam0", 7, 0.9, frame, 10.0)

    def answer(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(201)

    return SnapshotDelivery(
        keeper,
        lambda chunk: None,
        lambda *a: None,
        transport=httpx.MockTransport(answer),
        origin=ControllerOrigin(CONTROLLER),
    )


def test_snapshot_upload_to_a_foreign_url_is_refused() -> None:
    """Frame exfiltration: a snapshot command whose upload_url is the attacker's server."""
    sent: list[httpx.Request] = []
    delivery = _snapshot_delivery(sent)
    command = Snapshot(
        device=DEVICE, camera="cam0", track_id=7, upload_url="https://attacker.example/up"
    )
    ok, result, detail = delivery.deliver(command)
    assert (ok, result) == (False, "foreign_origin")
    assert "attacker.example" in detail
    assert sent == []
    # the controller's own upload URL still works
    own = Snapshot(device=DEVICE, camera="cam0", track_id=7, upload_url=f"{CONTROLLER}/api/s/1")
    assert delivery.deliver(own)[:2] == (True, "uploaded")
    assert [str(r.url) for r in sent] == [f"{CONTROLLER}/api/s/1"]


# ---- set-config ------------------------------------------------------------------------------


def _local_settings(tmp_path: Path, **extra: Any) -> AgentSettings:
    data_dir = tmp_path / "agent"
    data_dir.mkdir(mode=0o700)
    save_trust_store(
        TrustStore.from_keys([SigningKey.generate().public_key()]), data_dir / "trust.json"
    )
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "door.avi").write_bytes(b"not really a video")
    save_overlay(data_dir, {"det_flush_s": 0.3})
    return AgentSettings(device_id=DEVICE, data_dir=data_dir, allowed_file_roots=[videos], **extra)


def remote_set_config(settings: AgentSettings, patch: dict[str, Any]) -> str:
    """What the agent does with a set-config command, up to the save; returns the refusal
    reason and checks that neither the overlay nor the trust store changed."""
    folder = settings.data_dir
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(ConfigRejected) as caught:
        overlay = merge_patch(load_overlay(folder), patch)
        apply_overlay(settings, overlay)
        save_overlay(folder, overlay)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert (folder / OVERLAY_FILE).read_text() == "det_flush_s: 0.3\n"
    return caught.value.reason


def test_gstreamer_pipeline_in_set_config_is_refused(tmp_path: Path) -> None:
    """Pipeline injection: a GStreamer source whose filesink overwrites the trust store."""
    settings = _local_settings(tmp_path)
    trust = settings.trust_file
    pipeline = f"videotestsrc num-buffers=1 ! jpegenc ! filesink location={trust}"
    reason = remote_set_config(settings, {"cameras": [{"id": "x", "source": pipeline}]})
    assert reason == "pipeline_refused"


def test_profile_template_values_in_set_config_are_refused(tmp_path: Path) -> None:
    """Template injection: profile template values that splice a pipeline into the template."""
    settings = _local_settings(tmp_path)
    camera = {"id": "csi", "source": "profile", "template": {"sensor_id": "0 ! filesink"}}
    assert remote_set_config(settings, {"cameras": [camera]}) == "pipeline_refused"


def test_file_source_outside_the_allowed_roots_is_refused(tmp_path: Path) -> None:
    """File read: a camera source naming a file outside the configured video folders."""
    settings = _local_settings(tmp_path)
    camera = {"id": "x", "source": str(settings.trust_file)}
    assert remote_set_config(settings, {"cameras": [camera]}) == "file_outside_roots"


def test_file_source_escaping_a_root_through_a_link_or_dots_is_refused(tmp_path: Path) -> None:
    """Root escape: `..` and a symbolic link inside an allowed folder leading out of it."""
    settings = _local_settings(tmp_path)
    root = settings.allowed_file_roots[0]
    (root / "link.avi").symlink_to(settings.trust_file)
    for source in (str(root / ".." / "agent" / "trust.json"), str(root / "link.avi")):
        camera = {"id": "x", "source": source}
        assert remote_set_config(settings, {"cameras": [camera]}) == "file_outside_roots"


def test_too_many_cameras_in_set_config_are_refused(tmp_path: Path) -> None:
    """Camera flood: a long camera list that the agent would open and persist."""
    settings = _local_settings(tmp_path, max_cameras=4)
    cameras = [{"id": f"c{i}", "source": str(i)} for i in range(5)]
    assert remote_set_config(settings, {"cameras": cameras}) == "too_many_cameras"


def test_odd_v4l2_and_url_sources_are_refused(tmp_path: Path) -> None:
    """Source smuggling: a device node that is not a camera, a URL carrying a pipeline."""
    settings = _local_settings(tmp_path)
    for source in ("/dev/video0/../sda", "rtsp://cam.local/x ! filesink location=/x", "rtsp://"):
        reason = remote_set_config(settings, {"cameras": [{"id": "x", "source": source}]})
        assert reason in ("source_refused", "pipeline_refused"), source


# ---- the controller's chunk server ---------------------------------------------------------


class ChunkCounter:
    """A subscriber to one bundle's chunk topic, counting what the broker delivers."""

    def __init__(self, port: int, topic: str) -> None:
        self.count = 0
        self._lock = threading.Lock()
        ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="chunk-counter")
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: ready.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert ready.wait(10)

    def _on_message(self, *_: Any) -> None:
        with self._lock:
            self.count += 1

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def chunk_server(tmp_path: Path, mosquitto: Any, trust: TrustStore) -> Iterator[ChunkServer]:
    url = f"sqlite:///{tmp_path / 'controller.db'}"
    upgrade_database(url)
    engine = make_engine(url)
    trust_path = tmp_path / "controller-trust.json"
    save_trust_store(trust, trust_path)
    store = BundleRepository(
        tmp_path / "bundles", session_factory(engine), release_verifier(trust_path, 1 << 26), CHUNK
    )
    publisher = Publisher(MqttSettings(port=mosquitto.port), 20, "chunk-flood-ctl").start()
    assert publisher.wait_ready(10)
    limit = ChunkRateLimit(passes=2, window_s=600, max_entries=4)
    server = ChunkServer(publisher, store, Topics(), 0.01, limit=limit).start()
    try:
        yield server
    finally:
        server.stop()
        publisher.stop()
        engine.dispose()


def test_chunk_request_flood_cannot_resend_a_bundle_past_the_limit(
    chunk_server: ChunkServer, mosquitto: Any, bundle: Path
) -> None:
    """chunk_request flood: forged requests from one device, each asking for the whole bundle."""
    info = chunk_server.store.add_file(bundle)
    counter = ChunkCounter(mosquitto.port, Topics().bundle_chunks(info.digest))
    try:
        everything = [(0, info.chunks - 1)]
        for attempt in range(10):
            chunk_server.request(info, everything, device=DEVICE)
            # each pass is delivered before the next request, so coalescing hides no resend
            expected = min(attempt + 1, 2) * info.chunks
            wait_until("pass delivered", lambda n=expected: counter.count >= n)  # type: ignore[misc]
        assert chunk_server.chunks_sent == counter.count == 2 * info.chunks
        assert chunk_server.requests_limited == 8
        assert chunk_server.chunks_limited == 8 * info.chunks
        # another device is still served, and the table stays within its bound
        assert chunk_server.request(info, everything, device="cam-other") == info.chunks
        wait_until("its pass delivered", lambda: counter.count >= 3 * info.chunks)
        assert info.chunks >= 6
        for n in range(6):
            chunk_server.request(info, [(n, n)], device=f"made-up-{n}")
        assert len(chunk_server.limit) == 4 and chunk_server.limit.evicted == 4
    finally:
        counter.close()
