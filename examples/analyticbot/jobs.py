"""The analyticbot job queue: SQLite in the data directory, so queued jobs survive restarts.

The API enqueues (``POST /api/jobs``) and reports the depth (``GET
/api/jobs``); the ``jobs`` worker (:mod:`.jobworker`) consumes them, as
many copies as ``procguard up`` autoscales it to. Delivery is at least once,
completion exactly once:

- :meth:`JobQueue.take` marks the oldest queued job as taken by one
  consumer, with the time (a lease);
- :meth:`JobQueue.finish` marks it done *only if that consumer still holds
  it*, in the same transaction as the job's result, and counts the
  completion: a job finished twice would show ``completions`` 2;
- a consumer that stops gives its taken jobs back (:meth:`release`); one
  that was killed cannot, so a job whose lease is older than
  ``lease_s`` goes back to the queue the next time anyone takes a job.

Each consumer also says it is alive (:meth:`seen`), so that each can
publish its *share* of the backlog (:meth:`share`): depth divided by the
consumers alive. The supervisor sums the share over the copies, which is
the whole backlog, and runs ``ceil(backlog / target)`` copies, as a
Kubernetes HorizontalPodAutoscaler would with the average over the pods.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from . import settings

JOBS_DB = "jobs.sqlite3"
#: A taken job not finished within this many seconds goes back to the queue (its consumer was killed);
#: ``ANALYTICBOT_JOB_LEASE`` (seconds) changes it.
DEFAULT_LEASE_S = 30.0
LEASE_ENV = "ANALYTICBOT_JOB_LEASE"
#: A consumer not seen for this long no longer counts among those sharing the backlog.
CONSUMER_ALIVE_S = 2.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    payload TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'queued',   -- queued | taken | done
    taken_by TEXT,
    taken_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    completions INTEGER NOT NULL DEFAULT 0,
    result TEXT,
    enqueued_at REAL NOT NULL,
    done_at REAL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, id);
CREATE TABLE IF NOT EXISTS consumers (
    name TEXT PRIMARY KEY,
    seen_at REAL NOT NULL
);
"""


class Job(NamedTuple):
    id: int
    payload: str


class Counts(NamedTuple):
    queued: int
    taken: int
    done: int

    @property
    def depth(self) -> int:
        """Jobs not done yet: queued plus taken."""
        return self.queued + self.taken


class JobQueue:
    """The queue in ``path``; one connection per call, so any thread or process may use it."""

    def __init__(self, path: Path, *, lease_s: float = DEFAULT_LEASE_S) -> None:
        self.path = path
        self.lease_s = lease_s
        conn = settings.connect(path)
        try:
            conn.executescript(SCHEMA)
        finally:
            conn.close()

    @classmethod
    def in_data_dir(cls, explicit: str | None = None) -> JobQueue:
        """The queue of the data directory, with the lease ``$ANALYTICBOT_JOB_LEASE`` says (default 30 s)."""
        lease = float(os.environ.get(LEASE_ENV) or DEFAULT_LEASE_S)
        return cls(settings.data_dir(explicit) / JOBS_DB, lease_s=lease)

    def _write(self, statements: Sequence[tuple[str, tuple[object, ...]]]) -> list[sqlite3.Cursor]:
        conn = settings.connect(self.path)
        try:
            conn.execute("BEGIN IMMEDIATE")
            cursors = [conn.execute(sql, params) for sql, params in statements]
            conn.execute("COMMIT")
            return cursors
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            conn.close()

    def enqueue(self, payloads: Sequence[str]) -> int:
        """Add jobs (one transaction); the number added."""
        now = time.time()
        conn = settings.connect(self.path)
        try:
            conn.execute("BEGIN IMMEDIATE")
            rows = [(payload, now) for payload in payloads]
            conn.executemany("INSERT INTO jobs (payload, enqueued_at) VALUES (?, ?)", rows)
            conn.execute("COMMIT")
        finally:
            conn.close()
        return len(payloads)

    def take(self, consumer: str) -> Job | None:
        """The oldest queued job, now taken by ``consumer`` (None when the queue is empty).

        Jobs whose lease ran out (their consumer was killed) are queued again first.
        """
        now = time.time()
        conn = settings.connect(self.path)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "UPDATE jobs SET state = 'queued', taken_by = NULL WHERE state = 'taken' AND taken_at < ?",
                (now - self.lease_s,),
            )
            oldest = "SELECT id, payload FROM jobs WHERE state = 'queued' ORDER BY id LIMIT 1"
            row = conn.execute(oldest).fetchone()
            if row is not None:
                conn.execute(
                    "UPDATE jobs SET state = 'taken', taken_by = ?, taken_at = ?, attempts = attempts + 1"
                    " WHERE id = ?",
                    (consumer, now, row[0]),
                )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            conn.close()
        return None if row is None else Job(row[0], row[1])

    def finish(self, job: Job, consumer: str, result: str) -> bool:
        """Store the job's result and mark it done, if ``consumer`` still holds it; True when it did."""
        (cursor,) = self._write([(
            "UPDATE jobs SET state = 'done', result = ?, done_at = ?, completions = completions + 1"
            " WHERE id = ? AND state = 'taken' AND taken_by = ?",
            (result, time.time(), job.id, consumer),
        )])
        return cursor.rowcount == 1

    def release(self, consumer: str) -> int:
        """Give back every job ``consumer`` took and did not finish, and forget the consumer."""
        cursor, _ = self._write([
            ("UPDATE jobs SET state = 'queued', taken_by = NULL WHERE state = 'taken' AND taken_by = ?",
             (consumer,)),
            ("DELETE FROM consumers WHERE name = ?", (consumer,)),
        ])
        return cursor.rowcount

    def seen(self, consumer: str) -> None:
        """``consumer`` is alive (it shares the backlog)."""
        sql = "INSERT OR REPLACE INTO consumers (name, seen_at) VALUES (?, ?)"
        self._write([(sql, (consumer, time.time()))])

    def counts(self) -> Counts:
        conn = settings.connect(self.path)
        try:
            rows = dict(conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())
        finally:
            conn.close()
        return Counts(rows.get("queued", 0), rows.get("taken", 0), rows.get("done", 0))

    def share(self) -> float:
        """The backlog divided by the consumers alive (at least one): what one consumer publishes."""
        conn = settings.connect(self.path)
        try:
            (depth,) = conn.execute("SELECT COUNT(*) FROM jobs WHERE state != 'done'").fetchone()
            (alive,) = conn.execute(
                "SELECT COUNT(*) FROM consumers WHERE seen_at >= ?", (time.time() - CONSUMER_ALIVE_S,)
            ).fetchone()
        finally:
            conn.close()
        return depth / max(1, alive)

    def completions(self) -> dict[int, int]:
        """How many times each job was completed (``{completions: number of jobs}``)."""
        conn = settings.connect(self.path)
        try:
            rows = conn.execute("SELECT completions, COUNT(*) FROM jobs GROUP BY completions").fetchall()
            return dict(rows)
        finally:
            conn.close()
