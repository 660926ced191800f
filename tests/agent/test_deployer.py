"""The deploy flow on the device, from offer to running, with real bundles, store and model."""

from __future__ import annotations

import hashlib
import random
import tarfile

import pytest

from agent.deployer import Deployer
from agent.loader import ModelLoadFailed, load_model
from agent.runtimes.base import probe_runtime
from ota.install import BundleStore
from protocol.codec import Chunk
from protocol.messages import BundleOffer, Deploy

CHUNK = 16 * 1024


class Recorder:
    def __init__(self):
        self.events: list[tuple[str, dict]] = []
        self.subscribed: set[str] = set()
        self.activated: list = []
        self.fail_activation = False

    def emit(self, kind, **fields):
        self.events.append((kind, fields))

    def kinds(self):
        return [k for k, _ in self.events]

    def activate(self, installed):
        if self.fail_activation:
            self.fail_activation = False
            raise ModelLoadFailed("load_failed", "warm-up failed on purpose")
        self.activated.append(installed)


def _deployer(tmp_path, trust, rec, **kw):
    trust_file = tmp_path / "trust.json"
    trust.save(trust_file)
    return Deployer(
        store=BundleStore(tmp_path / "store"),
        downloads=tmp_path / "downloads",
        trust_file=trust_file,
        subscribe=rec.subscribed.add,
        unsubscribe=rec.subscribed.discard,
        emit=rec.emit,
        activate=rec.activate,
        **kw,
    )


def _offer(built, data: bytes) -> tuple[Deploy, list[Chunk]]:
    chunks = [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]
    offer = BundleOffer(
        name=built.manifest.name,
        version=built.manifest.version,
        digest=built.digest,
        size=len(data),
        chunk_size=CHUNK,
        chunks=len(chunks),
    )
    return Deploy(device="cam-01", bundle=offer), [
        Chunk(index=i, total=len(chunks), data=c) for i, c in enumerate(chunks)
    ]


def test_offer_to_running_reports_every_step(tmp_path, trust, build_blazeface):
    built = build_blazeface(version=1)
    rec = Recorder()
    deployer = _deployer(tmp_path, trust, rec)
    command, chunks = _offer(built, built.path.read_bytes())
    deployer.on_deploy(command)
    assert built.digest in rec.subscribed
    request = next(f for k, f in rec.events if k == "chunk_request")
    assert [(r.start, r.end) for r in request["missing"]] == [(0, len(chunks) - 1)]
    random.Random(1).shuffle(chunks)
    for chunk in chunks:
        deployer.on_chunk(built.digest, chunk)
    kinds = rec.kinds()
    assert kinds[0] == "deploy_offered"
    assert kinds.index("downloading") < kinds.index("verified") < kinds.index("running")
    assert rec.activated[0].digest == built.digest
    assert built.digest not in rec.subscribed
    assert all(f.get("bundle") == built.digest for k, f in rec.events)


def test_tampered_bundle_is_refused_with_a_reason_and_nothing_is_activated(
    tmp_path, trust, build_blazeface
):
    built = build_blazeface(version=1)
    data = bytearray(built.path.read_bytes())
    with tarfile.open(built.path) as tar:
        model = next(m for m in tar.getmembers() if m.name.endswith(".tflite"))
    data[model.offset_data + model.size // 2] ^= 0x01  # inside the model, past the signature
    rec = Recorder()
    deployer = _deployer(tmp_path, trust, rec)
    # the offer carries the digest of what is sent, so only the manifest's hashes catch it
    tampered = bytes(data)
    command, chunks = _offer(built, tampered)
    command = Deploy(
        device="cam-01",
        bundle=command.bundle.model_copy(update={"digest": hashlib.sha256(tampered).hexdigest()}),
    )
    deployer.on_deploy(command)
    for chunk in chunks:
        deployer.on_chunk(command.bundle.digest, chunk)
    failed = [f for k, f in rec.events if k == "failed"]
    assert failed and failed[0]["reason"] == "hash_mismatch"
    assert rec.activated == []
    assert deployer.store.current() is None


def test_unsigned_bundle_from_another_key_is_refused(tmp_path, trust, build_blazeface):
    from ota.keys import SigningKey

    built = build_blazeface(version=1, key=SigningKey.generate())
    rec = Recorder()
    deployer = _deployer(tmp_path, trust, rec)
    assert not deployer.install(built.path, digest=built.digest)
    failed = [f for k, f in rec.events if k == "failed"]
    assert failed[0]["reason"] == "unknown_key" or failed[0]["reason"] == "threshold_not_met"


def test_a_model_that_fails_to_load_rolls_back_to_the_previous_bundle(
    tmp_path, trust, build_blazeface
):
    rec = Recorder()
    deployer = _deployer(tmp_path, trust, rec)
    first = build_blazeface(version=1)
    assert deployer.install(first.path, digest=first.digest)
    second = build_blazeface(version=2)
    rec.fail_activation = True
    assert not deployer.install(second.path, digest=second.digest)
    assert "rolled_back" in rec.kinds()
    assert deployer.store.current().digest == first.digest
    assert rec.activated[-1].digest == first.digest


def test_lost_chunks_are_requested_again_and_only_those(tmp_path, trust, build_blazeface):
    built = build_blazeface(version=1)
    rec = Recorder()
    deployer = _deployer(tmp_path, trust, rec, request_timeout=0.0)
    command, chunks = _offer(built, built.path.read_bytes())
    deployer.on_deploy(command)
    lost = {1, 3}
    for chunk in chunks:
        if chunk.index not in lost:
            deployer.on_chunk(built.digest, chunk)
    deployer.tick()
    request = [f for k, f in rec.events if k == "chunk_request"][-1]
    assert [(r.start, r.end) for r in request["missing"]] == [(1, 1), (3, 3)]
    for index in sorted(lost):
        deployer.on_chunk(built.digest, chunks[index])
    assert "running" in rec.kinds()


def test_loader_picks_litert_and_says_why_others_were_passed_over(tmp_path, trust, build_blazeface):
    built = build_blazeface(version=1)
    store = BundleStore(tmp_path / "store")
    installed = store.install(built.path, trust, built.manifest.created)
    probes = [probe_runtime("litert")]
    model = load_model(installed, probes, ("onnx", "litert"))
    try:
        assert model.runtime == "litert"
        assert "onnx" in model.reason
    finally:
        model.close()
    with pytest.raises(ModelLoadFailed) as err:
        load_model(installed, probes, ("onnx",))
    assert err.value.reason == "no_runtime"
