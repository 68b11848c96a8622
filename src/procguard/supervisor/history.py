"""Every start and stop of every worker, in an SQLite file in the state directory.

One database (``STATE_DIR/history.sqlite``) serves all stacks that share the
state directory; rows carry the project name. Only a supervisor writes;
``procguard history`` reads, with or without a running supervisor. Writes
are a few per worker life, so each one is its own short transaction with a
busy timeout: two supervisors of different stacks never block each other
for long, and a reader never sees half a row.

A supervisor that was SIGKILLed (or OOM-killed) never wrote the ``stop``
rows of its workers. The next ``procguard up`` of the stack, holding the
stack's lock, closes those runs (:func:`close_unfinished_runs`): one
``stop`` row with the reason ``supervisor_died`` for each worker whose last
row is a ``start``.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..reasons import StopReason

logger = logging.getLogger(__name__)

FILENAME = "history.sqlite"

#: Reason of the ``stop`` rows written for the runs of a supervisor that died.
SUPERVISOR_DIED = StopReason.SUPERVISOR_DIED.value

_COLUMNS = (
    "project, worker, time, event, pid, reason, exit_status, runtime_seconds, peak_memory_bytes,"
    " detail, by_whom"
)

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
    peak_memory_bytes INTEGER,
    detail TEXT,
    by_whom TEXT
);
CREATE INDEX IF NOT EXISTS events_project_time ON events (project, time);
"""

#: Columns added since the first schema: added to an older file when it is opened for writing.
_ADDED_COLUMNS = (("detail", "TEXT"), ("by_whom", "TEXT"))


@dataclass(frozen=True)
class Event:
    """One row: ``event`` is ``start`` or ``stop``; the stop fields are None on a start.

    A stop row is one :class:`~procguard.outcome.StopOutcome` rendered:
    ``reason`` (the token), ``detail`` (the figures), ``exit_status`` (as a
    shell reports it: 128 + N for a death by signal N) and ``by`` (who ended
    the worker).
    """

    project: str
    worker: str
    time: float
    event: str
    pid: int | None = None
    reason: str | None = None
    exit_status: int | None = None
    runtime_seconds: float | None = None
    peak_memory_bytes: int | None = None
    detail: str | None = None
    by: str | None = None

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


#: How long a supervisor keeps trying to set up a history file another one is setting up too.
_SETUP_TIMEOUT_S = 10.0


def _initialise(db: sqlite3.Connection) -> None:
    """WAL mode and the schema, retried while another supervisor does the same.

    WAL + synchronous=NORMAL: a commit is an append, not an fsync, so
    recording an exit never delays the restart that follows it. Two
    supervisors of different stacks share one state directory and so one
    history file; when both start at once, switching the journal mode can
    answer "database is locked" at once, without waiting on SQLite's busy
    timeout, so the setup is retried until a deadline.
    """
    deadline = time.monotonic() + _SETUP_TIMEOUT_S
    delay = 0.01
    while True:
        try:
            if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            present = {row[1] for row in db.execute("PRAGMA table_info(events)")}
            for column, kind in _ADDED_COLUMNS:
                if column not in present:
                    db.execute(f"ALTER TABLE events ADD COLUMN {column} {kind}")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) and "busy" not in str(error):
                raise
            if time.monotonic() >= deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


class History:
    """The writer side, owned by one supervisor."""

    def __init__(self, path: Path) -> None:
        self.path = path
        new = not path.exists()
        self._db = _connect(path)
        if new:
            path.chmod(0o600)
        _initialise(self._db)

    def record(self, event: Event) -> None:
        """Append ``event``; a failing write is logged, never fatal to the supervisor."""
        try:
            self._db.execute(
                f"INSERT INTO events ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                    event.detail,
                    event.by,
                ),
            )
        except sqlite3.Error as error:
            logger.warning(
                "history %s: cannot record %s of %s: %s", self.path, event.event, event.worker, error
            )

    def close(self) -> None:
        self._db.close()


def _selected(db: sqlite3.Connection) -> str:
    """The select list for this file: columns an older file lacks read as NULL."""
    present = {row[1] for row in db.execute("PRAGMA table_info(events)")}
    return ", ".join(name if name in present else "NULL" for name in _COLUMNS.split(", "))


def read_events(path: Path, *, project: str | None = None, limit: int = 50) -> list[Event]:
    """The newest ``limit`` events (all when ``limit`` <= 0), newest first."""
    if not path.exists():
        return []
    db = _connect(path)
    try:
        query = f"SELECT {_selected(db)} FROM events"
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


def unfinished_starts(path: Path, project: str) -> list[Event]:
    """The ``start`` rows of ``project`` that are their worker's last row (no ``stop`` followed)."""
    if not path.exists():
        return []
    db = _connect(path)
    try:
        rows = db.execute(
            f"SELECT {_selected(db)} FROM events AS e WHERE project = ? AND event = 'start' AND id = "
            "(SELECT id FROM events WHERE project = e.project AND worker = e.worker"
            " ORDER BY time DESC, id DESC LIMIT 1) ORDER BY worker",
            (project,),
        ).fetchall()
    except sqlite3.OperationalError:
        return []  # no table yet
    finally:
        db.close()
    return [Event(*row) for row in rows]


def supervisor_died_stops(starts: Sequence[Event], now: float, survivors: Collection[int]) -> list[Event]:
    """The ``stop`` rows that close ``starts`` left open by a supervisor that died.

    Only what is known goes in: the pid, and the runtime when the worker's
    process was still running when the next ``up`` stopped it (its pid in
    ``survivors``) -- it ran until ``now``. How the others ended, when, and
    their peak memory died with the supervisor: left empty.
    """
    stops: list[Event] = []
    for start in starts:
        survived = start.pid is not None and start.pid in survivors
        stops.append(
            Event(
                start.project,
                start.worker,
                max(now, start.time),
                "stop",
                pid=start.pid,
                reason=SUPERVISOR_DIED,
                detail="the supervisor died while the worker ran",
                runtime_seconds=round(max(0.0, now - start.time), 3) if survived else None,
            )
        )
    return stops


def close_unfinished_runs(
    path: Path, project: str, *, now: float, survivors: Collection[int] = ()
) -> list[Event]:
    """Record a ``supervisor_died`` stop for each open run of ``project``; returns the rows written.

    Call it only while holding the stack's lock (no supervisor of the stack
    runs, so every open run belongs to one that died).
    """
    stops = supervisor_died_stops(unfinished_starts(path, project), now, survivors)
    if not stops:
        return stops
    history = History(path)
    try:
        for stop in stops:
            history.record(stop)
    finally:
        history.close()
    return stops
