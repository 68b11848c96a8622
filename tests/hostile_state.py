"""Damaged and hostile state-directory contents, made on purpose (shared by the state-file tests)."""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from procguard.supervisor.history import Event, History

PAGE = 4096


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The warning lines a test's code logged."""
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def aside(directory: Path, name: str, why: str) -> list[Path]:
    """The moved-aside copies of ``name`` (not their -wal/-shm companions)."""
    return sorted(p for p in directory.glob(f"{name}.{why}-*") if not p.name.endswith(("-wal", "-shm")))


def mode(path: Path) -> int:
    """The permission bits of ``path`` itself (a link is not followed)."""
    return stat.S_IMODE(os.lstat(path).st_mode)


def seeded_history(path: Path, rows: int = 3000, *, project: str = "p") -> None:
    """A real history of ``project`` (every run closed), checkpointed into the main file."""
    history = History(path)
    for i in range(rows):
        history.record(Event(project, f"w{i % 7}", 1000.0 + i, "start" if i % 2 == 0 else "stop", pid=100 + i // 2,
                             reason=None if i % 2 == 0 else "requested", exit_status=None if i % 2 == 0 else 0))
    history.close()
    assert not Path(f"{path}-wal").exists()  # closed last: all in the main file


def _garbage_header(path: Path) -> None:
    with open(path, "r+b") as f:
        f.write(os.urandom(100))


def _truncated(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def garbage_pages(path: Path) -> None:
    with open(path, "r+b") as f:
        for page in (2, 5, path.stat().st_size // PAGE - 1):
            f.seek(page * PAGE)
            f.write(os.urandom(PAGE))


def _all_garbage(path: Path) -> None:
    path.write_bytes(os.urandom(path.stat().st_size))


def _foreign(path: Path) -> None:
    path.unlink()
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
    db.execute("INSERT INTO notes (text) VALUES ('another program''s data')")
    db.commit()
    db.close()


def _foreign_events(path: Path) -> None:
    path.unlink()
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, what TEXT)")
    db.commit()
    db.close()


def _directory(path: Path) -> None:
    path.unlink()
    path.mkdir()
    (path / "inside").write_text("kept")


DAMAGE: dict[str, tuple[Callable[[Path], None], str, str]] = {
    # name: (how, suffix word of the moved-aside file, what the warning says)
    "garbage_header": (_garbage_header, "corrupt", "is not an SQLite database"),
    "truncated": (_truncated, "corrupt", "is damaged"),
    "garbage_pages": (garbage_pages, "corrupt", "is damaged"),
    "all_garbage": (_all_garbage, "corrupt", "is not an SQLite database"),
    "foreign": (_foreign, "corrupt", "is another program's database"),
    "foreign_events": (_foreign_events, "corrupt", "is another program's database"),
    "directory": (_directory, "unsafe", "is a directory"),
}
