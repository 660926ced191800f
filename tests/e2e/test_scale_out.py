"""Two controller replicas (`edgefleet controller run`) on one PostgreSQL behind one shared
subscription: every message is stored once, and a replica SIGKILLed under load loses nothing
once it is back (its broker sessions kept what it had not acknowledged, its journal what it
had). And a controller killed while the database stalled, with messages acknowledged to the
broker that only its journal held, stores each of them once after a restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import func, select, text

from controller.db import DetectionRow, make_engine
from controller.demo.broker import free_port
from controller.demo.waiting import wait_until
from protocol.codec import encode
from protocol.messages import Box, Detection, DetectionBatch
from protocol.topics import Channel, Topics
from tests.database import fresh_postgres

pytestmark = pytest.mark.e2e

DEVICES = 12
PER_DEVICE = 150


class Replica:
    def __init__(self, index: int, tmp_path: Path, db_url: str, broker_port: int) -> None:
        self.index = index
        self.port = free_port()
        self.log = tmp_path / f"controller-{index}.log"
        self.env = {
            **os.environ,
            "EDGEFLEET_DATA_DIR": str(tmp_path / f"controller-{index}"),
            "EDGEFLEET_DATABASE_URL": db_url,
            "EDGEFLEET_MQTT__PORT": str(broker_port),
            "EDGEFLEET_MQTT__CLIENT_ID": f"scale-controller-{index}",
            "EDGEFLEET_MQTT__SHARE_GROUP": "scale-test",
            "EDGEFLEET_INGEST__SESSIONS": "2",
            "EDGEFLEET_HTTP__PORT": str(self.port),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        exe = Path(sys.executable).parent / "edgefleet"
        with self.log.open("ab") as out:
            # a process group of its own: kill() takes its ingest workers down with it
            self.proc = subprocess.Popen(
                [str(exe), "controller", "run"],
                env=self.env,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        wait_until(f"replica {self.index} ready", self.ready, 60)

    def ready(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, self.log.read_text()[-3000:]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def stored(self) -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            body = r.read().decode()
        return sum(
            int(float(line.rsplit(" ", 1)[1]))
            for line in body.splitlines()
            if line.startswith('edgefleet_ingest_stored_total{kind="det"}')
        )

    def metric(self, name: str) -> float:
        """The sum of a metric's samples on this replica's /metrics."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            body = r.read().decode()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in body.splitlines()
            if line.startswith((name + " ", name + "{"))
        )

    def kill(self) -> None:
        """SIGKILL the controller and its ingest workers at once, as a crash of the host or
        the OOM killer of its service would (the controller alone killed, its workers store
        what they hold and stop: a gentler case)."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def pg_url(postgres_url) -> str:
    return fresh_postgres(postgres_url)


def _publish(port: int, device: str, sent: list[str], progress: threading.Semaphore) -> None:
    topics = Topics()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"scale-{device}")
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        for _ in range(PER_DEVICE):
            det = Detection(
                camera="cam0",
                label="person",
                score=0.8,
                box=Box(x1=0.1, y1=0.1, x2=0.2, y2=0.2),
                ts=time.time(),
            )
            batch = DetectionBatch(device=device, model="m@1", runtime="onnx", detections=(det,))
            info = client.publish(topics.device(device, Channel.DET), encode(batch), qos=1)
            info.wait_for_publish(30)  # the broker has it: from here on it must be stored
            sent.append(det.id)
            progress.release()
            time.sleep(0.01)
    finally:
        client.disconnect()
        client.loop_stop()


def test_two_replicas_store_every_message_once_and_a_killed_one_loses_nothing(
    tmp_path, mosquitto, pg_url
):
    replicas = [Replica(i, tmp_path, pg_url, mosquitto.port) for i in range(2)]
    engine = make_engine(pg_url)
    try:
        for replica in replicas:
            replica.start()
        sent: list[str] = []
        progress = threading.Semaphore(0)
        threads = [
            threading.Thread(
                target=_publish, args=(mosquitto.port, f"scale-{i:02d}", sent, progress)
            )
            for i in range(DEVICES)
        ]
        for thread in threads:
            thread.start()
        for _ in range(DEVICES * PER_DEVICE // 3):  # a third is out: kill one under load
            assert progress.acquire(timeout=60)
        stored_by_victim = replicas[1].stored()
        replicas[1].kill()
        time.sleep(1.0)
        replicas[1].start()  # same client ids: its sessions give back what it had not acked
        for thread in threads:
            thread.join(120)
        assert len(sent) == DEVICES * PER_DEVICE

        def all_stored() -> bool:
            with engine.connect() as conn:
                return conn.scalar(select(func.count()).select_from(DetectionRow)) == len(sent)

        wait_until("every message stored", all_stored, 90)
        with engine.connect() as conn:
            ids = list(conn.scalars(select(DetectionRow.id)))
        assert len(ids) == len(set(ids)) == len(sent)  # none lost, none stored twice
        assert set(ids) == set(sent)
        # both replicas took a share: the shared subscription split the stream
        assert stored_by_victim > 0 and replicas[0].stored() > 0
    finally:
        for replica in replicas:
            replica.stop()
        engine.dispose()


def test_messages_only_in_a_killed_controllers_journal_are_stored_after_its_restart(
    tmp_path, mosquitto, pg_url
):
    replica = Replica(0, tmp_path, pg_url, mosquitto.port)
    engine = make_engine(pg_url)
    blocker = engine.connect()
    try:
        replica.start()
        stall = blocker.begin()  # the database stalls: the ingest's inserts wait on this lock
        blocker.execute(text("LOCK TABLE detections IN EXCLUSIVE MODE"))
        sent: list[str] = []
        progress = threading.Semaphore(0)
        threads = [
            threading.Thread(target=_publish, args=(mosquitto.port, f"journal-{i}", sent, progress))
            for i in range(3)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert len(sent) == 3 * PER_DEVICE

        def only_journalled() -> bool:
            return (
                replica.metric("edgefleet_ingest_received_total") >= len(sent)
                and replica.metric("edgefleet_ingest_unacked") == 0
                and replica.metric("edgefleet_ingest_journal_bytes") > 0
            )

        # the broker holds nothing more for the controller, and the database nothing yet
        wait_until("every message acknowledged from the journal", only_journalled, 30)
        replica.kill()
        stall.rollback()

        def stored() -> int:
            with engine.connect() as conn:
                return conn.scalar(select(func.count()).select_from(DetectionRow)) or 0

        assert stored() == 0
        replica.start()
        wait_until("every message stored", lambda: stored() == len(sent), 60)
        with engine.connect() as conn:
            ids = list(conn.scalars(select(DetectionRow.id)))
        assert sorted(ids) == sorted(sent)  # none lost, none stored twice
    finally:
        blocker.close()
        replica.stop()
        engine.dispose()
