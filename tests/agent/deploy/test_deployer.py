"""The deploy flow on the device, from offer to running, with real bundles, store and model."""

from __future__ import annotations

import hashlib
import random
import tarfile

import pytest

from agent.deploy.deployer import DeviceDeployer
from agent.deploy.installer import Installer
from agent.deploy.loader import ModelLoadFailed, load_model
from agent.deploy.probation import ModelHealth
from agent.link.events import EventReporter
from agent.runtimes.base import probe_runtime
from agent.selection import choose_runtime
from ota.install import SlotStore
from ota.trust_file import save_trust_store
from protocol.codec import Chunk
from protocol.events import InstallReason
from protocol.messages import BundleOffer, Deploy, Event

CHUNK = 16 * 1024


class Recorder:
    """The events a deployer reported (as the wire Events), its subscriptions and its loads."""

    def __init__(self):
        self.events: list[Event] = []
        self.reporter = EventReporter(
            "cam-01", store=self.events.append, send_now=self.events.append
        )
        self.subscribed: set[str] = set()
        self.activated: list = []
        self.fail_activation = False

    def kinds(self):
        return [e.kind for e in self.events]

    def of(self, kind):
        return [e for e in self.events if e.kind == kind]

    def activate(self, installed):
        if self.fail_activation:
            self.fail_activation = False
            raise ModelLoadFailed(InstallReason.LOAD_FAILED, "warm-up failed on purpose")
        self.activated.append(installed)


INSTALLER_OPTIONS = ("health", "probation_s", "max_attempts")


def _deployer(tmp_path, trust, rec, **kw):
    trust_file = tmp_path / "trust.json"
    save_trust_store(trust, trust_file)
    store = SlotStore(tmp_path / "store")
    installer = Installer(
        store=store,
        trust_file=trust_file,
        events=rec.reporter,
        activate=rec.activate,
        **{k: kw.pop(k) for k in INSTALLER_OPTIONS if k in kw},
    )
    return DeviceDeployer(
        store=store,
        installer=installer,
        downloads=tmp_path / "downloads",
        subscribe=rec.subscribed.add,
        unsubscribe=rec.subscribed.discard,
        events=rec.reporter,
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
    request = rec.of("chunk_request")[0]
    assert [(r.start, r.end) for r in request.missing] == [(0, len(chunks) - 1)]
    random.Random(1).shuffle(chunks)
    for chunk in chunks:
        deployer.on_chunk(built.digest, chunk)
    kinds = rec.kinds()
    assert kinds[0] == "deploy_offered"
    assert kinds.index("downloading") < kinds.index("verified") < kinds.index("running")
    assert rec.activated[0].digest == built.digest
    assert built.digest not in rec.subscribed
    assert all(e.bundle == built.digest for e in rec.events)


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
    failed = rec.of("failed")
    assert failed and failed[0].reason == "hash_mismatch"
    assert rec.activated == []
    assert deployer.store.current() is None


def test_unsigned_bundle_from_another_key_is_refused(tmp_path, trust, build_blazeface):
    from ota.keys import SigningKey

    built = build_blazeface(version=1, key=SigningKey.generate())
    rec = Recorder()
    deployer = _deployer(tmp_path, trust, rec)
    assert not deployer.install(built.path, digest=built.digest)
    failed = rec.of("failed")
    assert failed[0].reason == "unknown_key" or failed[0].reason == "threshold_not_met"


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
    request = rec.of("chunk_request")[-1]
    assert [(r.start, r.end) for r in request.missing] == [(1, 1), (3, 3)]
    for index in sorted(lost):
        deployer.on_chunk(built.digest, chunks[index])
    assert "running" in rec.kinds()


def test_loader_picks_litert_and_says_why_others_were_passed_over(tmp_path, trust, build_blazeface):
    built = build_blazeface(version=1)
    store = SlotStore(tmp_path / "store")
    installed = store.install(built.path, trust, built.manifest.created)
    probes = [probe_runtime("litert")]
    model = load_model(installed, choose_runtime(installed.manifest, probes, ("onnx", "litert")))
    try:
        assert model.runtime == "litert"
        assert "onnx" in model.reason
    finally:
        model.close()
    with pytest.raises(ModelLoadFailed) as err:
        choose_runtime(installed.manifest, probes, ("onnx",))
    assert err.value.reason == "no_runtime"


# ---- probation, restart and stalls ------------------------------------------------------------


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class PipelineHealth:
    """The health a pipeline running the last activated bundle would report; settable."""

    def __init__(self, rec):
        self.rec = rec
        self.frames, self.errors = 10, 0

    def __call__(self):
        if not self.rec.activated:
            return None
        digest = self.rec.activated[-1].digest
        return ModelHealth(digest=digest, frames=self.frames, errors=self.errors, cameras=1)


def _on_probation(tmp_path, trust, build_blazeface, rec, **kw):
    """v1 committed, v2 installed and on a 30 s probation; returns deployer, clock, v1, v2."""
    kw.setdefault("health", PipelineHealth(rec))
    deployer = _deployer(tmp_path, trust, rec, probation_s=30.0, **kw)
    clock = Clock()
    deployer.installer.monotonic = clock
    first, second = build_blazeface(version=1), build_blazeface(version=2)
    assert deployer.install(first.path, digest=first.digest)
    clock.now += 31
    deployer.tick()
    assert deployer.store.pointer().state == "committed"
    rec.events.clear()
    assert deployer.install(second.path, digest=second.digest)
    return deployer, clock, first, second


def test_a_new_bundle_runs_only_after_a_healthy_probation_window(tmp_path, trust, build_blazeface):
    rec = Recorder()
    deployer, clock, _, second = _on_probation(
        tmp_path, trust, build_blazeface, rec, health=PipelineHealth(rec)
    )
    assert rec.kinds()[-1] == "probation"
    assert deployer.store.pointer().state == "probation"
    clock.now += 29
    deployer.tick()
    assert "running" not in rec.kinds()
    clock.now += 2
    deployer.tick()
    assert rec.kinds()[-1] == "running"
    assert rec.events[-1].bundle == second.digest
    assert deployer.store.pointer().state == "committed"


@pytest.mark.parametrize(
    ("frames", "errors", "reason"), [(10, 3, "inference_errors"), (0, 0, "no_frames")]
)
def test_an_unhealthy_probation_fails_with_its_reason_and_rolls_back(
    tmp_path, trust, build_blazeface, frames, errors, reason
):
    rec = Recorder()
    health = PipelineHealth(rec)
    deployer, clock, first, second = _on_probation(
        tmp_path, trust, build_blazeface, rec, health=health
    )
    health.frames, health.errors = frames, errors
    clock.now += 31
    deployer.tick()
    failed = rec.of("failed")
    assert failed[0].reason == reason and failed[0].bundle == second.digest
    rolled = rec.of("rolled_back")
    assert rolled[0].bundle == second.digest and rolled[0].reason == reason
    assert rec.activated[-1].digest == first.digest
    assert deployer.store.pointer().digest == first.digest
    assert deployer.store.pointer().state == "committed"


def test_restarts_during_probation_count_attempts_and_revert_after_the_max(
    tmp_path, trust, build_blazeface
):
    rec = Recorder()
    _, _, first, second = _on_probation(tmp_path, trust, build_blazeface, rec)
    # each new DeviceDeployer is an agent start on the same disk; the first start was the install
    for attempt in (2, 3):
        rec.events.clear()
        _deployer(tmp_path, trust, rec, probation_s=30.0).restore()
        assert rec.activated[-1].digest == second.digest
        assert f"attempt {attempt} of 3" in rec.events[0].message
    rec.events.clear()
    restarted = _deployer(tmp_path, trust, rec, probation_s=30.0)
    restarted.restore()
    assert rec.kinds() == ["failed", "rolled_back"]
    assert rec.events[1].reason == "probation_crashes"
    assert rec.activated[-1].digest == first.digest
    assert restarted.store.pointer().state == "committed"


def test_a_first_bundle_that_keeps_crashing_is_dropped_rather_than_started_again(
    tmp_path, trust, build_blazeface
):
    rec = Recorder()
    deployer = _deployer(tmp_path, trust, rec, probation_s=30.0, max_attempts=1)
    only = build_blazeface(version=1)
    assert deployer.install(only.path, digest=only.digest)
    _deployer(tmp_path, trust, rec, probation_s=30.0, max_attempts=1).restore()
    assert "probation_crashes" in [e.reason for e in rec.events]
    assert deployer.store.current() is None
    assert len(rec.activated) == 1


def test_a_restarted_agent_resumes_a_download_asking_only_for_missing_chunks(
    tmp_path, trust, build_blazeface
):
    built = build_blazeface(version=1)
    rec = Recorder()
    command, chunks = _offer(built, built.path.read_bytes())
    first_run = _deployer(tmp_path, trust, rec)
    first_run.on_deploy(command)
    half = len(chunks) // 2
    for chunk in chunks[:half]:
        first_run.on_chunk(built.digest, chunk)
    # the first run dies here; what it saved is all the second one has
    rec.events.clear()
    second_run = _deployer(tmp_path, trust, rec)
    second_run.resume()
    resumed = rec.of("downloading")[0]
    # progress is saved each tenth of the way, so at most the chunks since then are lost
    saved = round(resumed.progress * len(chunks))
    assert half - len(chunks) / 10 <= saved <= half
    request = rec.of("chunk_request")[0]
    assert [(r.start, r.end) for r in request.missing] == [(saved, len(chunks) - 1)]
    assert request.cmd_id == command.id
    for chunk in chunks[saved:]:
        second_run.on_chunk(built.digest, chunk)
    assert "running" in rec.kinds()
    assert sorted(p.name for p in (tmp_path / "downloads").iterdir()) == []


def test_a_stalled_download_is_asked_again_then_given_up_as_stalled(
    tmp_path, trust, build_blazeface
):
    built = build_blazeface(version=1)
    rec = Recorder()
    deployer = _deployer(tmp_path, trust, rec, request_timeout=0.0, max_requests=3)
    command, chunks = _offer(built, built.path.read_bytes())
    deployer.on_deploy(command)
    deployer.on_chunk(built.digest, chunks[0])
    for _ in range(5):
        deployer.tick()
    stalls = [e for e in rec.of("downloading") if e.reason == "stalled"]
    # progress reset the count: three requests after it brought nothing, then it gave up
    assert len(stalls) == 3 and stalls[0].progress == 1 / len(chunks)
    assert len(rec.of("chunk_request")) == 1 + 3
    failed = rec.of("failed")
    assert len(failed) == 1 and failed[0].reason == "stalled"
    assert built.digest not in rec.subscribed
    assert list((tmp_path / "downloads").glob("*.offer.json")) == []
    # a later offer of the same bundle starts from the chunk already on disk
    rec.events.clear()
    deployer.on_deploy(Deploy(device="cam-01", bundle=command.bundle))
    request = rec.of("chunk_request")[0]
    assert request.missing[0].start == 1


def test_a_refused_bundle_during_probation_leaves_a_first_trial_running_on(
    tmp_path, trust, build_blazeface
):
    from ota.keys import SigningKey

    rec = Recorder()
    deployer = _deployer(tmp_path, trust, rec, probation_s=30.0, health=PipelineHealth(rec))
    clock = Clock()
    deployer.installer.monotonic = clock
    first = build_blazeface(version=1)
    assert deployer.install(first.path, digest=first.digest)
    stranger = build_blazeface(version=2, key=SigningKey.generate())
    assert not deployer.install(stranger.path, digest=stranger.digest)
    assert "superseded" not in [e.reason for e in rec.events]
    clock.now += 31
    deployer.tick()
    assert rec.kinds()[-1] == "running" and rec.events[-1].bundle == first.digest
    assert deployer.store.pointer().state == "committed"


def test_a_refused_bundle_during_probation_ends_the_trial_on_the_committed_fallback(
    tmp_path, trust, build_blazeface
):
    from ota.keys import SigningKey

    rec = Recorder()
    deployer, clock, first, second = _on_probation(tmp_path, trust, build_blazeface, rec)
    stranger = build_blazeface(version=3, key=SigningKey.generate())
    assert not deployer.install(stranger.path, digest=stranger.digest)
    superseded = [e for e in rec.events if e.reason == "superseded"]
    assert superseded[0].bundle == second.digest
    assert rec.activated[-1].digest == first.digest
    assert deployer.store.pointer().digest == first.digest
    clock.now += 31
    deployer.tick()
    assert "running" not in rec.kinds()
