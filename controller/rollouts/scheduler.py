"""Scheduler jobs: APScheduler, with its jobs stored in the database, drives the rollout tick
(which also starts scheduled rollouts and fails deployments past their stage timeouts) and the
data-retention job. Only the replica holding the leader lock runs them.

On PostgreSQL the leader holds a session-level advisory lock on a connection of its own; if the
process dies, the server drops the connection and the lock with it, and another replica takes
over within `leader_retry_s`. On SQLite one process owns the file: it is always the leader.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import Connection, Engine, MetaData, text
from sqlalchemy.pool import NullPool

from controller.db import make_engine
from controller.rollouts.models import SCHEDULER_JOBS_TABLE

log = logging.getLogger(__name__)

# any fixed number, distinct from the migration lock
LEADER_LOCK_KEY = 0x6564676672
TICK_JOB = "rollouts-tick"
RETENTION_JOB = "data-retention"

# APScheduler stores a job as a reference to a module-level function with its arguments; the
# function finds the live scheduler that added it here, by a key made fresh at each start.
_RUNNING: dict[str, RolloutScheduler] = {}


def run_job(owner: str, job: str) -> None:
    """The stored jobs' entry point; runs `job` on the scheduler registered as `owner`."""
    scheduler = _RUNNING.get(owner)
    if scheduler is None:
        log.warning("event=scheduler_job_orphaned job=%s", job)
        return
    scheduler.run(job)


class LeaderLock:
    """Who drives rollouts: a PostgreSQL advisory lock, or always this process on SQLite."""

    def __init__(self, engine: Engine, key: int = LEADER_LOCK_KEY) -> None:
        self._engine = engine
        self._key = key
        self._conn: Connection | None = None
        self._lock = threading.Lock()
        self._closed = False

    @property
    def shared(self) -> bool:
        return self._engine.dialect.name == "postgresql"

    def try_acquire(self) -> bool:
        """True when this process leads now (acquiring the lock if it can)."""
        if not self.shared:
            return not self._closed
        with self._lock:
            if self._closed:
                return False
            if self._conn is not None:
                if self._alive(self._conn):
                    return True
                self._drop()
            conn = self._engine.connect()
            try:
                got = bool(
                    conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": self._key}).scalar()
                )
                conn.commit()
            except Exception:
                conn.close()
                raise
            if got:
                self._conn = conn
            else:
                conn.close()
            return got

    def held(self) -> bool:
        """True while this process still holds the lock; never acquires it."""
        if not self.shared:
            return not self._closed
        with self._lock:
            if self._closed or self._conn is None:
                return False
            if self._alive(self._conn):
                return True
            self._drop()
            return False

    def _alive(self, conn: Connection) -> bool:
        try:
            conn.execute(text("SELECT 1"))
            conn.commit()
        except Exception:  # the connection (and with it the lock) is gone
            log.warning("event=leader_lock_lost")
            return False
        return True

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.invalidate()
                self._conn.close()
            except Exception:  # already broken
                log.debug("event=leader_connection_close_failed")
            self._conn = None

    def release(self, *, close: bool = False) -> None:
        """Give the lock up; with `close`, never take it again (a stopped scheduler)."""
        with self._lock:
            self._closed = self._closed or close
            if self._conn is None:
                return
            try:
                self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self._key})
                self._conn.commit()
            except Exception:  # the lock went with the connection
                log.debug("event=leader_unlock_failed")
            self._conn.close()
            self._conn = None


class RolloutScheduler:
    """Leader election plus an APScheduler whose jobs live in the `scheduler_jobs` table."""

    def __init__(
        self,
        engine: Engine,
        tick: Callable[[], Any],
        *,
        tick_s: float = 1.0,
        leader_retry_s: float = 5.0,
        retention: Callable[[], Any] | None = None,
        retention_every_s: float = 3600.0,
    ) -> None:
        self._engine = engine
        self._jobs: dict[str, Callable[[], Any]] = {TICK_JOB: tick}
        if retention is not None:
            self._jobs[RETENTION_JOB] = retention
        self._intervals = {TICK_JOB: tick_s, RETENTION_JOB: retention_every_s}
        self._leader_retry_s = leader_retry_s
        self.lock = LeaderLock(engine)
        self._scheduler: BackgroundScheduler | None = None
        self._owner = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.leading = threading.Event()
        self.runs: dict[str, int] = dict.fromkeys(self._jobs, 0)

    def start(self) -> RolloutScheduler:
        self._stop.clear()
        self.lock = LeaderLock(self._engine)
        self._thread = threading.Thread(target=self._elect, name="rollout-leader", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        # closed first: an election or a job still under way can no longer take the lock
        self.lock.release(close=True)
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None
        self._step_down()

    def run(self, job: str) -> None:
        """Run one job now, if this replica still leads (only the election takes the lock)."""
        if not self.lock.held():
            # the election thread steps down; a job thread must not stop its own scheduler
            log.warning("event=job_skipped_not_leader job=%s", job)
            return
        try:
            self._jobs[job]()
        except Exception:  # logged; the next run tries again
            log.exception("event=scheduler_job_failed job=%s", job)
        self.runs[job] = self.runs.get(job, 0) + 1

    def _elect(self) -> None:
        while not self._stop.is_set():
            try:
                leads = self.lock.try_acquire()
            except Exception:  # the database is unreachable: not leading, try again
                log.exception("event=leader_election_failed")
                leads = False
            if leads and self._scheduler is None and not self._stop.is_set():
                self._step_up()
            elif not leads and self._scheduler is not None:
                self._step_down()
            self._stop.wait(self._leader_retry_s)
        # a scheduler started while stop() was waiting must not outlive it
        self._step_down()

    def _step_up(self) -> None:
        self._owner = uuid.uuid4().hex
        _RUNNING[self._owner] = self
        # an engine of its own, unpooled: the job store disposes of it at shutdown, and a
        # pooled connection still out at that moment would never be closed
        own_engine = make_engine(
            self._engine.url.render_as_string(hide_password=False), poolclass=NullPool
        )
        store = SQLAlchemyJobStore(
            engine=own_engine, tablename=SCHEDULER_JOBS_TABLE, metadata=MetaData()
        )
        scheduler = BackgroundScheduler(
            jobstores={"default": store},
            executors={"default": ThreadPoolExecutor(2)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 30},
            timezone="UTC",
        )
        for job in self._jobs:
            scheduler.add_job(
                run_job,
                "interval",
                seconds=self._intervals[job],
                args=(self._owner, job),
                id=job,
                name=job,
                replace_existing=True,
            )
        scheduler.start()
        self._scheduler = scheduler
        self.leading.set()
        log.info("event=leader_elected jobs=%s", ",".join(self._jobs))

    def _step_down(self) -> None:
        scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None:
            scheduler.shutdown(wait=True)
            log.info("event=leader_stepped_down")
        _RUNNING.pop(self._owner, None)
        self.leading.clear()
