"""The history file itself: opened without following links, checked, moved aside when damaged.

:mod:`.history` says what goes in the history; this module makes sure that
whatever is at ``STATE_DIR/history.sqlite`` can neither stop a start nor be
written through:

- A path that is not a plain file of ours with one link (a symlink, a
  directory, a FIFO, a hard link), or whose ``-wal``/``-shm`` companion is
  not, is never opened: it is moved aside as ``history.sqlite.unsafe-<UTC
  time>``.
- A file that is not a history database -- garbage, truncated, torn pages
  (SQLite's "file is not a database", "database disk image is malformed",
  a failing ``quick_check``), another program's SQLite database -- is moved
  aside as ``history.sqlite.corrupt-<UTC time>`` with its ``-wal`` and
  ``-shm`` companions (kept for inspection).

Either way one warning line names the file and its new name, and a fresh,
private (0600) history is created.

Renaming an SQLite file that another connection has open would corrupt the
fresh one (that connection deletes ``history.sqlite-wal`` by name when it
closes), so every process holds a shared ``flock`` on
``history.sqlite.lock`` for as long as it has the history open, and a file
is moved aside (or created) only under the exclusive lock. The lock is a
separate file because closing any descriptor of the database itself would
drop SQLite's own (fcntl) locks on it. A damaged file that another process
still has open (a supervisor of another stack on the same state directory)
is left in place with one warning: :class:`InUse`.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import time
from pathlib import Path

from ..instances.statefiles import (
    CORRUPT,
    UNSAFE,
    UnsafeFileError,
    file_problem,
    identity,
    lstat_or_none,
    move_aside,
    open_private,
)

logger = logging.getLogger(__name__)

#: The columns every procguard history has had (a table without them is another program's).
_COLUMN_NAMES = (
    "project", "worker", "time", "event", "pid", "reason",
    "exit_status", "runtime_seconds", "peak_memory_bytes",
)
#: Columns added since (a stop outcome's detail and who ended the worker): the writer adds them
#: to an older file; a reader of an older file reads them as NULL.
_ADDED_COLUMNS = (("detail", "TEXT"), ("by_whom", "TEXT"))
COLUMN_NAMES = (*_COLUMN_NAMES, *(name for name, _kind in _ADDED_COLUMNS))
COLUMNS = ", ".join(COLUMN_NAMES)


def select_list(db: sqlite3.Connection) -> str:
    """Every column of an event, in order, for this file: one it lacks (an older file) reads as NULL."""
    present = {str(row[1]) for row in db.execute("PRAGMA table_info(events)").fetchall()}
    return ", ".join(name if name in present else "NULL" for name in COLUMN_NAMES)

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


def lock_path(path: Path) -> Path:
    """The file whose ``flock`` says who has the history at ``path`` open."""
    return path.with_name(path.name + ".lock")


#: Files SQLite keeps beside the database; they move with it.
COMPANIONS = ("-wal", "-shm")

#: What happens after a damaged history is moved aside (the end of the warning line).
FRESH = "a fresh history starts"

#: How long a supervisor keeps trying to set up a history file another one is setting up too.
_SETUP_TIMEOUT_S = 10.0
#: How long to wait for the shared lock (only a mover holds it exclusively, for a moment).
_SHARED_WAIT_S = 5.0
#: How long a mover waits for the other openers (readers hold it for milliseconds).
_EXCLUSIVE_WAIT_S = 0.5
#: How often a path that changes under us is looked at again.
_ATTEMPTS = 5

# SQLite's primary result codes for a file that is not (or no longer) a sound database.
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26


class Damaged(Exception):
    """The history file must be moved aside: ``problem`` says why, ``why`` is the suffix word."""

    def __init__(self, problem: str, why: str = CORRUPT) -> None:
        super().__init__(problem)
        self.problem = problem
        self.why = why


class InUse(Exception):
    """A damaged history file another process has open: left in place (already logged)."""

    def __init__(self, ident: tuple[int, int]) -> None:
        super().__init__(ident)
        self.ident = ident


def damage(error: sqlite3.Error) -> str | None:
    """What ``error`` says about the file, when it says the file is damaged; else None."""
    code = getattr(error, "sqlite_errorcode", None)  # Python 3.11+
    text = str(error)
    if code is not None:
        primary = code & 0xFF
        if primary == _SQLITE_NOTADB:
            return "is not an SQLite database"
        if primary == _SQLITE_CORRUPT:
            return f"is damaged ({text})"
        return None
    if "file is not a database" in text:
        return "is not an SQLite database"
    if "malformed" in text or "corrupt" in text:
        return f"is damaged ({text})"
    return None


def _is_busy(error: sqlite3.Error) -> bool:
    text = str(error)
    return "locked" in text or "busy" in text


def _lock(fd: int, operation: int, wait_s: float) -> bool:
    """``flock(fd, operation)``, retried until ``wait_s`` has passed; True once taken."""
    deadline = time.monotonic() + wait_s
    delay = 0.005
    while True:
        try:
            fcntl.flock(fd, operation | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.05)


def _path_problem(path: Path, st: os.stat_result) -> Damaged | None:
    """Why the history at ``path`` (status ``st``) or a companion of it must not be opened."""
    problem = file_problem(st)
    if problem is not None:
        return Damaged(problem, UNSAFE)
    for suffix in COMPANIONS:
        companion = lstat_or_none(path.with_name(path.name + suffix))
        if companion is not None:
            problem = file_problem(companion)
            if problem is not None:
                return Damaged(f"has a companion {path.name}{suffix} that {problem}", UNSAFE)
    return None


def _schema_problem(db: sqlite3.Connection) -> str | None:
    """Why this database is not a procguard history (another program's), or None."""
    names = {
        str(row[0])
        for row in db.execute("SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'").fetchall()
    }
    if "events" not in names:
        return f"is another program's database (tables {', '.join(sorted(names))})" if names else None
    columns = {str(row[1]) for row in db.execute("PRAGMA table_info(events)").fetchall()}
    missing = [name for name in _COLUMN_NAMES if name not in columns]
    if missing:
        return f"is another program's database (its events table has no {', '.join(missing)})"
    return None


def _prepare(db: sqlite3.Connection, *, create: bool, verify: bool) -> None:
    """Check the schema (and every page with ``verify``); with ``create``, WAL mode and our schema.

    WAL + synchronous=NORMAL: a commit is an append, not an fsync, so
    recording an exit never delays the restart that follows it. Two
    supervisors of different stacks share one state directory and so one
    history file; when both start at once, switching the journal mode can
    answer "database is locked" at once, without waiting on SQLite's busy
    timeout, so the setup is retried until a deadline. Raises
    :class:`Damaged` for a file that is not a sound history.
    """
    deadline = time.monotonic() + _SETUP_TIMEOUT_S
    delay = 0.01
    while True:
        try:
            problem = _schema_problem(db)
            if problem is not None:
                raise Damaged(problem)
            if verify:
                # quick_check may answer on several lines; the warning is one
                verdict = " ".join(str(db.execute("PRAGMA quick_check(1)").fetchone()[0]).split())
                if verdict != "ok":
                    raise Damaged(f"is damaged ({verdict})")
            if create:
                if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                    db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.executescript(_SCHEMA)
                present = {str(row[1]) for row in db.execute("PRAGMA table_info(events)").fetchall()}
                for name, kind in _ADDED_COLUMNS:
                    if name not in present:
                        db.execute(f"ALTER TABLE events ADD COLUMN {name} {kind}")
            return
        except sqlite3.DatabaseError as error:
            found = damage(error)
            if found is not None:
                raise Damaged(found) from None
            if not _is_busy(error) or time.monotonic() >= deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


class Unavailable(Exception):
    """The history cannot be opened now (its lock stays taken, or its path keeps changing)."""


class OpenHistory:
    """The history open for one user: SQLite's connection and the shared lock that covers it.

    The connection is closed before the lock's descriptor; the lock is a
    separate file precisely so that closing it never drops SQLite's own
    (fcntl) locks on the database.
    """

    def __init__(self, path: Path, db: sqlite3.Connection, lock_fd: int, ident: tuple[int, int]) -> None:
        self.path = path
        self.db = db
        self.ident = ident
        self._lock_fd: int | None = lock_fd

    def close(self) -> None:
        if self._lock_fd is None:
            return
        self.db.close()
        os.close(self._lock_fd)
        self._lock_fd = None

    def discard(self, problem: Damaged) -> None:
        """Close, and move the file aside unless another process has it open (then raise :class:`InUse`)."""
        if self._lock_fd is None:
            return
        fd, self._lock_fd = self._lock_fd, None
        self.db.close()
        try:
            _move_aside_when_free(self.path, fd, self.ident, problem)
        finally:
            os.close(fd)


def _move_aside_when_free(path: Path, lock_fd: int, ident: tuple[int, int], problem: Damaged) -> None:
    """Move the damaged history aside under the exclusive lock; :class:`InUse` if it cannot be had."""
    fcntl.flock(lock_fd, fcntl.LOCK_UN)
    if not _lock(lock_fd, fcntl.LOCK_EX, _EXCLUSIVE_WAIT_S):
        logger.warning(
            "%s %s, but another procguard process has it open; left in place until it is free "
            "(no history is recorded meanwhile)",
            path,
            problem.problem,
        )
        raise InUse(ident)
    try:
        st = lstat_or_none(path)
        if st is not None and identity(st) == ident:
            move_aside(path, why=problem.why, problem=problem.problem, then=FRESH, expect=st,
                       companions=COMPANIONS)
    finally:
        fcntl.flock(lock_fd, fcntl.LOCK_UN)


def _create(path: Path, lock_fd: int) -> None:
    """A new, empty, private history file (SQLite would create it with the umask's mode).

    Under the exclusive lock when it can be had, because a ``-wal`` left
    without its database would be replayed into the new one: such leftovers
    are moved aside first, which is safe only while nobody has the history
    open. ``lock_fd`` holds the shared lock on entry; it holds none on return.
    """
    fcntl.flock(lock_fd, fcntl.LOCK_UN)
    exclusive = _lock(lock_fd, fcntl.LOCK_EX, _EXCLUSIVE_WAIT_S)
    try:
        if lstat_or_none(path) is not None:
            return  # made meanwhile by a concurrent opener
        for suffix in COMPANIONS if exclusive else ():
            orphan = path.with_name(path.name + suffix)
            st = lstat_or_none(orphan)
            if st is not None:
                move_aside(orphan, why=UNSAFE, problem=f"is left without its database {path.name}",
                           then=FRESH, expect=st)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            return  # a concurrent opener made it first
        try:
            os.fchmod(fd, 0o600)
        finally:
            os.close(fd)
    finally:
        if exclusive:
            fcntl.flock(lock_fd, fcntl.LOCK_UN)


def take_over(path: Path, st: os.stat_result) -> bool:
    """Move aside the damaged history ``st`` left in place, now, if nobody has it open any more.

    True when the path no longer names it (moved now, or by someone else).
    """
    try:
        fd = open_private(lock_path(path), os.O_RDWR | os.O_CREAT)
    except (OSError, UnsafeFileError):
        return False
    try:
        if not _lock(fd, fcntl.LOCK_EX, 0):
            return False
        move_aside(path, why=CORRUPT, problem="was found damaged earlier", then=FRESH, expect=st,
                   companions=COMPANIONS)
        return True
    finally:
        os.close(fd)


def open_history(path: Path, *, create: bool, verify: bool = False) -> OpenHistory | None:
    """The history at ``path``, open and checked; None when there is none (and ``create`` is off).

    A damaged or hostile file is moved aside (and, with ``create``, a fresh
    one made); :class:`InUse` when it cannot be moved because another
    process has it open. Other SQLite errors propagate.
    """
    if not create and not os.path.lexists(path):
        return None
    lock_fd = open_private(lock_path(path), os.O_RDWR | os.O_CREAT)
    handed_over = False
    try:
        for _ in range(_ATTEMPTS):
            if not _lock(lock_fd, fcntl.LOCK_SH, _SHARED_WAIT_S):
                msg = f"{lock_path(path)} stays locked by another process"
                raise Unavailable(msg)
            st = lstat_or_none(path)
            if st is None:
                if not create:
                    return None
                _create(path, lock_fd)
                continue
            found = _path_problem(path, st)
            if found is None:
                db = sqlite3.connect(str(path), timeout=5.0, isolation_level=None)
                try:
                    after = lstat_or_none(path)
                    if after is None or identity(after) != identity(st):
                        db.close()  # replaced while SQLite opened it: look again
                        continue
                    _prepare(db, create=create, verify=verify)
                except Damaged as problem:
                    db.close()
                    found = problem
                except BaseException:
                    db.close()
                    raise
                else:
                    handed_over = True
                    return OpenHistory(path, db, lock_fd, identity(st))
            _move_aside_when_free(path, lock_fd, identity(st), found)
            if not create:
                return None
        msg = f"{path} keeps changing while it is opened"
        raise Unavailable(msg)
    finally:
        if not handed_over:
            os.close(lock_fd)
