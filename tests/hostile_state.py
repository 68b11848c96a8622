"""Damaged and hostile state-directory contents, made on purpose (shared by the state-file tests and the reliability bench)."""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
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


@dataclass
class Planted:
    """What a case planted: the warnings it expects, and files that must come out unchanged."""

    warnings: list[str] = field(default_factory=list)
    victims: dict[Path, tuple[bytes, int]] = field(default_factory=dict)

    def victim(self, path: Path, content: bytes = b"someone else's file\n") -> Path:
        path.write_bytes(content)
        path.chmod(0o644)
        self.victims[path] = (content, 0o644)
        return path

    def untouched(self) -> list[str]:
        changed = []
        for path, (content, mode) in self.victims.items():
            if path.read_bytes() != content or stat.S_IMODE(path.stat().st_mode) != mode:
                changed.append(str(path))
        return changed


def _links(state: Path, tmp: Path, planted: Planted, project: str) -> None:
    """Symlinks where history.sqlite, a worker's log and supervisor.log belong; a directory at the socket."""
    logs = state / "logs" / project
    logs.mkdir(parents=True, mode=0o700)
    victim_db = tmp / "victim.sqlite"
    seeded_history(victim_db, rows=5, project="victim")
    planted.victims[victim_db] = (victim_db.read_bytes(), stat.S_IMODE(victim_db.stat().st_mode))
    (state / "history.sqlite").symlink_to(victim_db)
    (logs / "ticker.log").symlink_to(planted.victim(tmp / "victim.log"))
    (logs / "supervisor.log").symlink_to(planted.victim(tmp / "victim-supervisor.log"))
    (state / f"supervisor.{project}.sock").mkdir()
    planted.warnings += [f"{state}/history.sqlite is a symlink", f"{logs}/ticker.log is a symlink",
                         f"{logs}/supervisor.log is a symlink", f"{state}/supervisor.{project}.sock is not a socket"]


def _links_and_files(state: Path, tmp: Path, planted: Planted, project: str) -> None:
    """A file where logs/ belongs, a hard link at history.sqlite, a file at the socket, a link as the lock."""
    (state / "logs").write_text("not a directory\n")
    os.link(planted.victim(tmp / "victim-hardlinked"), state / "history.sqlite")
    (state / "history.sqlite.lock").symlink_to(planted.victim(tmp / "victim-lock"))
    (state / f"supervisor.{project}.sock").write_text("not a socket\n")
    planted.warnings += [f"{state}/logs is not a directory", f"{state}/history.sqlite has 2 hard links",
                         f"{state}/history.sqlite.lock is a symlink",
                         f"{state}/supervisor.{project}.sock is not a socket"]


def _fifos_and_dirs(state: Path, tmp: Path, planted: Planted, project: str) -> None:
    """A symlink where the stack's log directory belongs, FIFOs at history.sqlite and a worker's log."""
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    planted.victim(elsewhere / "ticker.log")
    (state / "logs").mkdir(mode=0o700)
    (state / "logs" / project).symlink_to(elsewhere)
    os.mkfifo(state / "history.sqlite")
    planted.warnings += [f"{state}/logs/{project} is a symlink", f"{state}/history.sqlite is not a regular file"]


def _companions(state: Path, tmp: Path, planted: Planted, project: str) -> None:
    """A good history whose -wal is a symlink; a worker log that is a FIFO; loose mode on logs/."""
    seeded_history(state / "history.sqlite", project=project)
    (state / "history.sqlite-wal").symlink_to(planted.victim(tmp / "victim-wal"))
    logs = state / "logs" / project
    logs.mkdir(parents=True, mode=0o700)
    (state / "logs").chmod(0o777)
    os.mkfifo(logs / "ticker.log")
    planted.warnings += ["history.sqlite-wal that is a symlink", f"{logs}/ticker.log is not a regular file",
                         f"{state}/logs was writable by group or others"]


def _locks(state: Path, tmp: Path, planted: Planted, project: str) -> None:
    """The stack's own lock file (``instances/supervisor.PROJECT.lock``) is a hard link to someone's file."""
    instances = state / "instances"
    instances.mkdir(mode=0o700)
    lock = instances / f"supervisor.{project}.lock"
    os.link(planted.victim(tmp / "victim-supervisor-lock"), lock)
    planted.warnings += [f"lock file {lock} has 2 hard links"]


def _instances_link(state: Path, tmp: Path, planted: Planted, project: str) -> None:
    """``instances/`` (where the lock files live) is a symlink to someone else's directory."""
    elsewhere = tmp / "elsewhere-instances"
    elsewhere.mkdir()
    planted.victim(elsewhere / f"supervisor.{project}.lock")
    (state / "instances").symlink_to(elsewhere)
    planted.warnings += [f"{state}/instances is a symlink"]


def _instances_file(state: Path, tmp: Path, planted: Planted, project: str) -> None:
    """A file where ``instances/`` belongs."""
    (state / "instances").write_text("not a directory\n")
    planted.warnings += [f"{state}/instances is not a directory"]


def _instances_loose(state: Path, tmp: Path, planted: Planted, project: str) -> None:
    """``instances/`` writable by everyone."""
    (state / "instances").mkdir()
    (state / "instances").chmod(0o777)
    planted.warnings += [f"{state}/instances was writable by group or others"]


#: Composite hostile contents: each plants several things in STATE (victims in TMP) for a stack PROJECT
#: whose worker is named ``ticker``, and says which warning each must give.
HOSTILE: dict[str, Callable[[Path, Path, Planted, str], None]] = {
    "links": _links, "links_and_files": _links_and_files, "fifos_and_dirs": _fifos_and_dirs,
    "companions": _companions, "locks": _locks, "instances_link": _instances_link,
    "instances_file": _instances_file, "instances_loose": _instances_loose,
}
