"""Nothing is lost: the broker goes away for 20 s, then the agent is SIGKILLed and restarted;
the controller ends with every event the agent recorded, exactly once."""

from __future__ import annotations

import signal
import sqlite3
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from agent.link.outbox import Outbox, OutboxSettings
from controller.db import DetectionRow, EventRow
from controller.demo.processes import spawn_agent
from controller.demo.sample_video import Placement, write_sample_video
from controller.demo.waiting import wait_until
from controller.server import Controller
from controller.settings import ControllerSettings, HttpSettings, MqttSettings
from ota.install import SlotStore
from ota.trust_file import save_trust_store

pytestmark = pytest.mark.e2e

DEVICE = "outage-cam-01"
OUTAGE_S = 20.0


def journal_count(path: Path) -> int:
    """How many ids the running agent has put into its outbox (read beside it: WAL mode)."""
    if not path.exists():
        return 0
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
        try:
            return int(db.execute("SELECT COUNT(*) FROM journal").fetchone()[0])
        except sqlite3.OperationalError:  # the agent has not created its tables yet
            return 0


def stored_ids(controller: Controller) -> tuple[list[str], set[str]]:
    with controller.sessions() as db:
        dets = list(db.scalars(select(DetectionRow.id).where(DetectionRow.device == DEVICE)))
        evts = set(db.scalars(select(EventRow.id).where(EventRow.device == DEVICE)))
    return dets, evts


def test_outage_and_sigkill_lose_nothing_and_duplicate_nothing(
    tmp_path, mosquitto, build_blazeface, trust, command_key_file
):
    controller = Controller(
        ControllerSettings(
            data_dir=tmp_path / "controller",
            mqtt=MqttSettings(port=mosquitto.port, client_id="outage-controller"),
            http=HttpSettings(port=0),
            command_key_path=command_key_file,
        )
    ).start()
    agent_dir = tmp_path / "agent"
    agent_dir.mkdir()
    save_trust_store(trust, agent_dir / "trust.json")
    SlotStore(agent_dir / "bundles").install(
        build_blazeface(version=1).path, trust, datetime.now(timezone.utc)
    )
    # a face appears and goes every 2 s: a start and an end event per cycle
    video = write_sample_video(
        tmp_path / "cycle.avi",
        fps=10,
        seconds_per_image=1.0,
        scenes=[("astronaut", Placement("astronaut")), ("coffee", Placement("coffee"))],
    )
    config = agent_dir / "agent.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "device_id": DEVICE,
                "data_dir": str(agent_dir),
                "mqtt": {"host": "127.0.0.1", "port": mosquitto.port, "keepalive": 5},
                "cameras": [
                    {
                        "id": "cam0",
                        "source": str(video.path),
                        "tracker": {"min_hits": 2, "max_missed": 3},
                    }
                ],
                "health_interval_s": 1.0,
                "det_flush_s": 0.2,
                "outbox": {"journal": True},
            }
        )
    )
    journal = agent_dir / "outbox.sqlite"
    log = tmp_path / "agent.log"
    agent = spawn_agent(config, log)
    try:
        wait_until("detections at the controller", lambda: len(stored_ids(controller)[0]) >= 2, 60)

        # 1. the broker goes away for 20 s while events keep coming
        recorded = journal_count(journal)
        mosquitto.stop()
        down_at = time.monotonic()
        wait_until("events during the outage", lambda: journal_count(journal) >= recorded + 6, 30)
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))  # the outage's length
        during = journal_count(journal) - recorded
        mosquitto.start()
        wait_until(
            "the outage's events at the controller",
            lambda: len(stored_ids(controller)[0]) >= recorded + during - 2,
            30,
        )

        # 2. the agent dies mid-stream and comes back
        agent.send_signal(signal.SIGKILL)
        agent.wait(timeout=10)
        killed_at = journal_count(journal)
        agent = spawn_agent(config, log)
        wait_until("events after the restart", lambda: journal_count(journal) >= killed_at + 4, 30)
        agent.send_signal(signal.SIGTERM)  # a clean stop flushes the outbox
        assert agent.wait(timeout=20) == 0

        box = Outbox(journal, OutboxSettings(journal=True))
        ids = box.journal_ids()
        assert box.dropped == 0
        assert box.depth == 0, "a clean stop leaves nothing unsent"
        box.close()
        assert len(ids) == len(set(ids))

        def everything_arrived() -> bool:
            dets, evts = stored_ids(controller)
            return set(ids) <= set(dets) | evts

        wait_until("every recorded id at the controller", everything_arrived, 30)
        dets, evts = stored_ids(controller)
        # exactly once: nothing missing, nothing the agent did not record, no id twice
        assert len(dets) == len(set(dets))
        assert set(dets) <= set(ids)
        assert set(ids) - set(dets) <= evts
        assert len(dets) >= 20
        with controller.sessions() as db:
            kinds = set(db.scalars(select(DetectionRow.event).where(DetectionRow.device == DEVICE)))
        assert {"start", "end"} <= kinds  # track events, not one row per frame
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait(timeout=10)
        controller.stop()
        if agent.returncode not in (0, -signal.SIGKILL, -signal.SIGTERM):
            sys.stderr.write(log.read_text()[-4000:])
