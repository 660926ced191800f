"""Fixtures for controller tests: databases of both kinds, signed bundles, started controllers."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest

from controller.server import Controller
from controller.settings import ControllerSettings, HttpSettings, IngestSettings, MqttSettings
from ota.build import BuiltBundle, BundleSpec, VariantSource, build_bundle
from ota.keys import SigningKey
from ota.manifest import InputSpec, PostprocessSpec
from ota.trust import TrustStore
from ota.trust_file import save_trust_store
from tests.controller import operators
from tests.database import fresh_postgres


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """A migrated, empty database: a SQLite file, or the session's PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'controller.db'}"
    return fresh_postgres(request.getfixturevalue("postgres_url"))


@pytest.fixture
def release_key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def trust_file(tmp_path, release_key) -> Path:
    path = tmp_path / "trust.json"
    save_trust_store(TrustStore.from_keys([release_key.public_key()]), path)
    return path


@pytest.fixture
def make_bundle(tmp_path, release_key) -> Callable[..., BuiltBundle]:
    """Builds a real signed bundle with a random model file of `model_bytes` bytes."""

    def build(
        name: str = "face",
        version: int = 1,
        model_bytes: int = 40_000,
        key: SigningKey | None = None,
    ) -> BuiltBundle:
        src = tmp_path / f"src-{uuid.uuid4().hex[:8]}"
        src.mkdir()
        (src / "model.tflite").write_bytes(os.urandom(model_bytes))
        spec = BundleSpec(
            name=name,
            version=version,
            labels=("face",),
            input=InputSpec(width=128, height=128),
            postprocess=PostprocessSpec(kind="blazeface"),
            variants=(VariantSource(runtime="litert", model="model.tflite"),),
        )
        out = tmp_path / f"{name}-{version}-{uuid.uuid4().hex[:6]}.bundle"
        return build_bundle(spec, src, [key or release_key], out, datetime.now(timezone.utc))

    return build


@pytest.fixture
def controller_settings(
    tmp_path, mosquitto, db_url, trust_file, command_key_file
) -> Callable[..., ControllerSettings]:
    """Settings for a controller on this test's broker and database, API on a free port."""

    def settings(**overrides) -> ControllerSettings:
        values = {
            "data_dir": tmp_path / "controller",
            "database_url": db_url,
            "mqtt": MqttSettings(port=mosquitto.port, client_id=f"ctl-{uuid.uuid4().hex[:8]}"),
            "http": HttpSettings(port=0),
            "ingest": IngestSettings(max_delay_s=0.05),
            "trust_path": trust_file,
            "command_key_path": command_key_file,
            "chunk_size": 4096,
            "max_inflight": 3,
        }
        values.update(overrides)
        return ControllerSettings(**values)

    return settings


@pytest.fixture
def controller(controller_settings) -> Iterator[Controller]:
    """A started controller with the default test settings."""
    ctl = Controller(controller_settings()).start()
    try:
        # inside the try: a controller that fails this check is still stopped (its scheduler
        # would otherwise keep the database's leader lock for the rest of the run)
        assert ctl.ingest.wait_ready(15) and ctl.publisher.wait_ready(15)
        yield ctl
    finally:
        ctl.stop()


@pytest.fixture
def api_client(controller) -> Iterator[httpx.Client]:
    """An httpx client of the started `controller`, signed in as an admin (API token)."""
    with operators.api_client(controller.api_url, controller.sessions) as client:
        yield client


@pytest.fixture(autouse=True)
def cli_credentials(request, monkeypatch, tmp_path) -> None:
    """The CLI reads no credentials of the person running the tests; with a started
    `controller`, it signs in as an admin through $EDGEFLEET_TOKEN."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "user-config"))
    monkeypatch.delenv("EDGEFLEET_TOKEN", raising=False)
    if "controller" in request.fixturenames:
        ctl = request.getfixturevalue("controller")
        monkeypatch.setenv("EDGEFLEET_TOKEN", operators.make_token(ctl.sessions))
