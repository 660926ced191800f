"""Fixtures for the ingest tests: a migrated database and ingests started on this test's broker."""

from __future__ import annotations

import uuid

import pytest

from controller.db import make_engine, session_factory, upgrade_database
from controller.mqtt.ingest import Ingest
from controller.settings import IngestSettings, MqttSettings


@pytest.fixture
def sessions(db_url):
    upgrade_database(db_url)
    engine = make_engine(db_url)
    yield session_factory(engine)
    engine.dispose()


@pytest.fixture
def start_ingest(mosquitto, sessions, tmp_path):
    """Starts ingests (settings overridable, hooks optional); each is stopped at the end.

    They share the test's broker client id and journal folder, as restarts of one controller
    do; `journal=False` in the settings runs one without a journal."""
    started: list[Ingest] = []
    client_id = f"ingest-{uuid.uuid4().hex[:8]}"

    def start(hooks=(), **ingest) -> Ingest:
        settings = IngestSettings(
            **{"max_delay_s": 0.05, "journal_commit_interval_s": 0.01, **ingest}
        )
        mqtt = MqttSettings(port=mosquitto.port, client_id=client_id)
        one = Ingest(
            mqtt, settings, sessions, hooks=hooks, journal_dir=tmp_path / "ingest-journal"
        ).start()
        assert one.wait_ready(5)
        started.append(one)
        return one

    yield start
    for one in started:
        one.stop(timeout=2)
