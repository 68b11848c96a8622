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

No history file can stop a start or make ``procguard history`` fail: a
damaged or hostile one is moved aside with one warning line and a fresh
history starts (:mod:`.historyfile`). ``up``'s start-up step
(:func:`close_unfinished_runs`) reads every page (``PRAGMA quick_check``,
about 0.17 s per million rows), so damage is found before the supervisor
starts; the supervisor's writer and the readers find it when a query hits
it, and then do the same. A failing write is logged, never fatal.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..instances.statefiles import UnsafeFileError, identity, lstat_or_none
from ..reasons import StopReason
from .historyfile import (
    COLUMNS,
    Damaged,
    InUse,
    OpenHistory,
    Unavailable,
    damage,
    lock_path,
    open_history,
    select_list,
    take_over,
)

logger = logging.getLogger(__name__)

FILENAME = "history.sqlite"

__all__ = [
    "FILENAME",
    "SUPERVISOR_DIED",
    "Event",
    "History",
    "close_unfinished_runs",
    "db_path",
    "lock_path",
    "read_events",
    "read_projects",
    "supervisor_died_stops",
    "unfinished_starts",
]

#: Reason of the ``stop`` rows written for the runs of a supervisor that died.
SUPERVISOR_DIED = StopReason.SUPERVISOR_DIED.value


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
        """The ``history --json`` row: the same keys on every row (a start's stop fields are null),
        so a reader can index any row without checking its kind."""
        data = asdict(self)
        peak = self.peak_memory_bytes
        data["peak_memory_mb"] = None if peak is None else round(peak / (1024 * 1024), 1)
        return data


def db_path(state_dir: Path) -> Path:
    return state_dir / FILENAME


class History:
    """The writer side, owned by one supervisor. It never raises: a failure is logged.

    ``verify`` reads every page at opening (the start-up check of ``up``);
    without it, damage is found by the first write that hits it, and the
    file is then moved aside and the write done in a fresh history.
    """

    def __init__(self, path: Path, *, verify: bool = False) -> None:
        self.path = path
        self._open: OpenHistory | None = None
        self._stuck: tuple[int, int] | None = None  # a damaged file left in place: in use elsewhere
        self._last_error = ""
        self._reopen(verify=verify)

    def _reopen(self, *, verify: bool = False) -> OpenHistory | None:
        try:
            self._open = open_history(self.path, create=True, verify=verify)
            self._stuck = None
        except InUse as in_use:
            self._stuck = in_use.ident
        except (Unavailable, sqlite3.Error, OSError, UnsafeFileError) as error:
            self._warn(f"history {self.path}: cannot open it ({error}); going on without history")
        return self._open

    def _usable(self) -> OpenHistory | None:
        if self._open is not None:
            return self._open
        if self._stuck is not None:
            st = lstat_or_none(self.path)
            if st is not None and identity(st) == self._stuck and not take_over(self.path, st):
                return None  # still in use elsewhere: this row is lost, quietly (warned once)
        return self._reopen()

    def _warn(self, message: str) -> None:
        if message != self._last_error:  # the same failure on every write: said once
            self._last_error = message
            logger.warning("%s", message)

    def record(self, event: Event) -> None:
        """Append ``event``; a failing write is logged, never fatal to the supervisor."""
        for _ in range(2):  # a second try in a fresh file when this one turns out damaged
            opened = self._usable()
            if opened is None:
                return
            try:
                self._insert(opened.db, event)
                self._last_error = ""
                return
            except sqlite3.Error as error:
                found = damage(error)
                if found is None:
                    self._warn(f"history {self.path}: cannot record {event.event} of {event.worker}: {error}")
                    return
                self._open = None
                try:
                    opened.discard(Damaged(found))
                except InUse as in_use:
                    self._stuck = in_use.ident
                    return
                except OSError as move_error:
                    self._warn(f"history {self.path}: cannot move it aside ({move_error})")
                    return

    @staticmethod
    def _insert(db: sqlite3.Connection, event: Event) -> None:
        db.execute(
            f"INSERT INTO events ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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

    def unfinished_starts(self, project: str) -> list[Event]:
        """As :func:`unfinished_starts`, through this writer's connection."""
        opened = self._usable()
        if opened is None:
            return []
        try:
            query = _UNFINISHED.format(columns=select_list(opened.db))
            return [Event(*row) for row in opened.db.execute(query, (project,)).fetchall()]
        except sqlite3.Error as error:
            self._warn(f"history {self.path}: cannot read the open runs of {project}: {error}")
            return []

    def close(self) -> None:
        if self._open is not None:
            self._open.close()
            self._open = None


def _read(path: Path, query: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    """Rows of ``query``; [] when there is no (usable) history. Never raises for a bad file.

    What went wrong is said in one warning line: a damaged file is moved
    aside (or left for the process that has it open), any other error is
    named.
    """
    try:
        opened = open_history(path, create=False)
    except InUse:
        return []
    except (Unavailable, sqlite3.Error, OSError, UnsafeFileError) as error:
        logger.warning("history %s: cannot read it (%s)", path, error)
        return []
    if opened is None:
        return []
    try:
        query = query.format(columns=select_list(opened.db))  # an older file's missing columns: NULL
        return list(opened.db.execute(query, params).fetchall())
    except sqlite3.Error as error:
        found = damage(error)
        if found is not None:
            try:
                opened.discard(Damaged(found))
            except InUse:
                pass
            except OSError as move_error:
                logger.warning("history %s: cannot move it aside (%s)", path, move_error)
        elif "no such table" not in str(error):  # no table yet: a supervisor is setting it up
            logger.warning("history %s: cannot read it (%s)", path, error)
        return []
    finally:
        opened.close()


def read_events(path: Path, *, project: str | None = None, limit: int = 50) -> list[Event]:
    """The newest ``limit`` events (all when ``limit`` <= 0), newest first."""
    query = "SELECT {columns} FROM events"
    params: list[Any] = []
    if project is not None:
        query += " WHERE project = ?"
        params.append(project)
    query += " ORDER BY time DESC, id DESC"
    if limit > 0:
        query += " LIMIT ?"
        params.append(limit)
    return [Event(*row) for row in _read(path, query, params)]


def read_projects(path: Path) -> list[str]:
    """The projects with at least one event in the database, sorted (empty if none yet).

    ``procguard history`` and ``logs`` use it to name a stack that is not
    running any more when the user did not say which one.
    """
    rows = _read(path, "SELECT DISTINCT project FROM events ORDER BY project", ())
    return [str(row[0]) for row in rows]


_UNFINISHED = (
    "SELECT {columns} FROM events AS e WHERE project = ? AND event = 'start' AND id = "
    "(SELECT id FROM events WHERE project = e.project AND worker = e.worker"
    " ORDER BY time DESC, id DESC LIMIT 1) ORDER BY worker"
)


def unfinished_starts(path: Path, project: str) -> list[Event]:
    """The ``start`` rows of ``project`` that are their worker's last row (no ``stop`` followed)."""
    return [Event(*row) for row in _read(path, _UNFINISHED, (project,))]


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
    runs, so every open run belongs to one that died). This is ``up``'s
    start-up check of the history: a damaged file is found here (every page
    is read) and moved aside before the supervisor opens it.
    """
    history = History(path, verify=True)
    try:
        stops = supervisor_died_stops(history.unfinished_starts(project), now, survivors)
        for stop in stops:
            history.record(stop)
    finally:
        history.close()
    return stops
