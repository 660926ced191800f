"""The scheduler: jobs stored in the database, run only by the replica that holds the lock."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

from sqlalchemy import select

from controller.db import make_engine, upgrade_database
from controller.rollouts.models import scheduler_jobs
from controller.rollouts.scheduler import RETENTION_JOB, TICK_JOB, LeaderLock, RolloutScheduler


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


class Counter:
    def __init__(self) -> None:
        self.count = 0
        self.lock = threading.Lock()

    def __call__(self) -> None:
        with self.lock:
            self.count += 1


def test_the_leader_runs_tick_and_retention_from_stored_jobs(db_url):
    upgrade_database(db_url)
    engine = make_engine(db_url)
    ticks, retention = Counter(), Counter()
    scheduler = RolloutScheduler(
        engine, ticks, tick_s=0.1, leader_retry_s=0.1, retention=retention, retention_every_s=0.2
    ).start()
    try:
        assert scheduler.leading.wait(10)
        assert wait_for(lambda: ticks.count >= 3 and retention.count >= 1)
        with engine.connect() as conn:
            stored = set(conn.scalars(select(scheduler_jobs.c.id)))
        assert stored == {TICK_JOB, RETENTION_JOB}
    finally:
        scheduler.stop()
        engine.dispose()
    after = ticks.count
    time.sleep(0.3)
    assert ticks.count == after, "a stopped scheduler runs nothing"


def test_with_two_replicas_on_postgresql_only_one_drives(postgres_url):
    upgrade_database(postgres_url)
    engines = [make_engine(postgres_url) for _ in range(2)]
    counters = [Counter(), Counter()]
    schedulers = [
        RolloutScheduler(e, c, tick_s=0.1, leader_retry_s=0.1)
        for e, c in zip(engines, counters, strict=True)
    ]
    try:
        schedulers[0].start()
        assert schedulers[0].leading.wait(10)
        schedulers[1].start()
        time.sleep(1.0)
        assert not schedulers[1].leading.is_set()
        assert counters[1].count == 0 and counters[0].count > 0
        schedulers[0].stop()  # the leader goes away: the other takes over
        assert schedulers[1].leading.wait(10)
        assert wait_for(lambda: counters[1].count >= 2)
    finally:
        for scheduler in schedulers:
            scheduler.stop()
        for engine in engines:
            engine.dispose()


def test_a_leader_killed_with_sigkill_hands_the_lock_over(postgres_url):
    upgrade_database(postgres_url)
    holder = (
        "import sys, time\n"
        "from controller.db import make_engine\n"
        "from controller.rollouts.scheduler import LeaderLock\n"
        "lock = LeaderLock(make_engine(sys.argv[1]))\n"
        "assert lock.try_acquire()\n"
        "print('leading', flush=True)\n"
        "time.sleep(600)\n"
    )
    engine = make_engine(postgres_url)
    lock = LeaderLock(engine)
    try:
        with subprocess.Popen(
            [sys.executable, "-c", holder, postgres_url], stdout=subprocess.PIPE, text=True
        ) as proc:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "leading"
            assert not lock.try_acquire()
            proc.kill()
            proc.wait(10)
            proc.stdout.close()
        assert wait_for(lock.try_acquire, 10)
    finally:
        lock.release()
        engine.dispose()


def test_on_sqlite_the_single_process_leads(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'c.db'}")
    try:
        assert LeaderLock(engine).try_acquire()
    finally:
        engine.dispose()


def test_a_scheduler_stopped_while_it_steps_up_leaves_no_lock_or_job_behind(postgres_url):
    upgrade_database(postgres_url)
    engine = make_engine(postgres_url)
    ticks = Counter()
    try:
        # stopped at once, many times: whatever point the election reached, nothing outlives stop
        for _ in range(5):
            scheduler = RolloutScheduler(engine, ticks, tick_s=0.05, leader_retry_s=0.05).start()
            time.sleep(0.02)
            scheduler.stop()
            assert not scheduler.lock.try_acquire(), "a stopped scheduler never leads again"
        after = ticks.count
        time.sleep(0.3)
        assert ticks.count == after, "a stopped scheduler runs nothing"
        other = LeaderLock(engine)
        assert other.try_acquire(), "the lock was left held"
        other.release(close=True)
    finally:
        engine.dispose()
