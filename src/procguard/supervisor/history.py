"""Every start and stop of every worker, in an SQLite file in the state directory.

One database (``STATE_DIR/history.sqlite``) serves all stacks that share the
state directory; rows carry the project name. Only a supervisor writes;
``procguard history`` reads, with or without a running supervisor. Writes
are a few per worker life, so each one is its own short transaction with a
busy timeout: two supervisors of different stacks never block each other
for long, and a reader never sees half a row.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

FILENAME = "history.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    project TEXT NOT NULL,
    worker TEXT NOT NULL,
    time REAL NOT NULL,
    event TEXT NOT NULL,
    pid INTEGER,
    reason TEXT,
    exit_status INTEGER,
    runtime_seconds REAL,
    peak_memory_bytes INTEGER
);
CREATE INDEX IF NOT EXISTS events_project_time ON events (project, time);
"""


@dataclass(frozen=True)
class Event:
    """One row: ``event`` is ``start`` or ``stop``; the stop fields are None on a start."""

    project: str
    worker: str
    time: float
    event: str
    pid: int | None = None
    reason: str | None = None
    exit_status: int | None = None
    runtime_seconds: float | None = None
    peak_memory_bytes: int | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        if self.peak_memory_bytes is not None:
            data["peak_memory_mb"] = round(self.peak_memory_bytes / (1024 * 1024), 1)
        return data


def db_path(state_dir: Path) -> Path:
    return state_dir / FILENAME


def _connect(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(str(path), timeout=5.0, isolation_level=None)
    return connection


class History:
    """The writer side, owned by one supervisor."""

    def __init__(self, path: Path) -> None:
        self.path = path
        new = not path.exists()
        self._db = _connect(path)
        if new:
            path.chmod(0o600)
        # WAL + synchronous=NORMAL: a commit is an append, not an fsync, so
        # recording an exit never delays the restart that follows it.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def record(self, event: Event) -> None:
        """Append ``event``; a failing write is logged, never fatal to the supervisor."""
        try:
            self._db.execute(
                "INSERT INTO events (project, worker, time, event, pid, reason, exit_status,"
                " runtime_seconds, peak_memory_bytes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    event.project,
                    event.worker,
                    event.time,
                    event.event,
                    event.pid,
                    event.reason,
                    event.exit_status,
                    event.runtime_seconds,
                    event.peak_memory_bytes,
                ),
            )
        except sqlite3.Error as error:
            logger.warning(
                "history %s: cannot record %s of %s: %s", self.path, event.event, event.worker, error
            )

    def close(self) -> None:
        self._db.close()


def read_events(path: Path, *, project: str | None = None, limit: int = 50) -> list[Event]:
    """The newest ``limit`` events (all when ``limit`` <= 0), newest first."""
    if not path.exists():
        return []
    db = _connect(path)
    try:
        query = (
            "SELECT project, worker, time, event, pid, reason, exit_status, runtime_seconds,"
            " peak_memory_bytes FROM events"
        )
        params: list[Any] = []
        if project is not None:
            query += " WHERE project = ?"
            params.append(project)
        query += " ORDER BY time DESC, id DESC"
        if limit > 0:
            query += " LIMIT ?"
            params.append(limit)
        try:
            rows = db.execute(query, params).fetchall()
        except sqlite3.OperationalError:
            return []  # no table yet: a supervisor has never run here
    finally:
        db.close()
    return [Event(*row) for row in rows]


def read_projects(path: Path) -> list[str]:
    """The projects with at least one event in the database, sorted (empty if none yet).

    ``procguard history`` and ``logs`` use it to name a stack that is not
    running any more when the user did not say which one.
    """
    if not path.exists():
        return []
    db = _connect(path)
    try:
        rows = db.execute("SELECT DISTINCT project FROM events ORDER BY project").fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        db.close()
    return [str(row[0]) for row in rows]
