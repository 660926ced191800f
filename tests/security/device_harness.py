"""A device on disk for the bundle and device attack tests: slot store, trust store, downloads,
and the deployer and installer that guard them; offers and chunks made from bundle files."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from hashlib import sha256
from pathlib import Path
from typing import Any

from agent.deploy.deployer import DeviceDeployer
from agent.deploy.installer import Installer
from agent.link.events import EventReporter
from ota.install import InstalledBundle, SlotStore
from ota.keys import SigningKey
from ota.transfer import chunk_digests
from ota.trust import TrustStore
from ota.trust_file import save_trust_store
from protocol.codec import Chunk
from protocol.messages import BundleOffer, Deploy, Event
from tests.ota.ota_forge import forge, manifest_for

DEVICE = "cam-sec"
CHUNK = 4096


class Recorder:
    """The events a deployer reported, its bundle subscriptions and its activations."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.reporter = EventReporter(DEVICE, store=self.events.append, send_now=self.events.append)
        self.subscribed: set[str] = set()
        self.activated: list[InstalledBundle] = []

    def of(self, kind: str) -> list[Event]:
        return [e for e in self.events if e.kind == kind]

    def last(self) -> Event:
        return self.events[-1]


@dataclass
class Device:
    """One device's data folder and the code that writes to it."""

    root: Path
    trust_file: Path
    store: SlotStore
    recorder: Recorder
    deployer: DeviceDeployer

    @property
    def downloads(self) -> Path:
        return self.root / "downloads"

    def disk(self) -> dict[str, bytes]:
        """Every file under the data folder with its bytes: what "nothing changed" compares."""
        return {
            str(p.relative_to(self.root)): p.read_bytes()
            for p in sorted(self.root.rglob("*"))
            if p.is_file()
        }


def make_device(tmp_path: Path, trust: TrustStore, **deployer_options: Any) -> Device:
    root = tmp_path / "device"
    root.mkdir(mode=0o700)
    trust_file = root / "trust.json"
    save_trust_store(trust, trust_file)
    store = SlotStore(root / "bundles")
    recorder = Recorder()
    installer = Installer(
        store=store,
        trust_file=trust_file,
        events=recorder.reporter,
        activate=recorder.activated.append,
    )
    deployer = DeviceDeployer(
        store=store,
        installer=installer,
        downloads=root / "downloads",
        subscribe=recorder.subscribed.add,
        unsubscribe=recorder.subscribed.discard,
        events=recorder.reporter,
        **deployer_options,
    )
    return Device(root, trust_file, store, recorder, deployer)


def good_bundle_at(path: Path, files: dict[str, bytes], key: SigningKey) -> Path:
    """A bundle the device accepts: signed by the release key, valid from now on."""
    manifest = manifest_for(files, created=datetime.now(UTC), version=5)
    return forge(path, files, [key], manifest=manifest)


def random_files() -> dict[str, bytes]:
    return {"litert-fp32/model.tflite": os.urandom(30_000), "shared/labels.txt": b"face\n"}


def offer_for(path: Path, *, digests: bool = True, **changes: Any) -> Deploy:
    """A Deploy command offering the bundle at `path` in CHUNK-byte chunks."""
    data = path.read_bytes()
    fields: dict[str, Any] = {
        "name": "face",
        "version": 5,
        "digest": sha256(data).hexdigest(),
        "size": len(data),
        "chunk_size": CHUNK,
        "chunks": -(-len(data) // CHUNK),
        "chunk_digests": chunk_digests(path, CHUNK) if digests else (),
    }
    fields.update(changes)
    return Deploy(device=DEVICE, bundle=BundleOffer.model_validate(fields))


def chunks_of(path: Path) -> list[Chunk]:
    data = path.read_bytes()
    parts = [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]
    return [Chunk(index=i, total=len(parts), data=part) for i, part in enumerate(parts)]
