"""A damaged or hostile history file is moved aside and replaced, whoever opens it, and never
written through; one that another process still has open is left alone until it is free."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from procguard.supervisor.history import (
    Event,
    History,
    close_unfinished_runs,
    lock_path,
    read_events,
    read_projects,
    unfinished_starts,
)

from .helpers import PYTHON, python_env, wait_for, wait_for_file
from .hostile_state import DAMAGE, PAGE, aside, garbage_pages, mode, seeded_history, warnings

# -- history: damaged files -------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_start_up_check_moves_a_damaged_history_aside_and_starts_fresh(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    path = tmp_path / "history.sqlite"
    seeded_history(path)
    damage, why, said = DAMAGE[case]
    damage(path)
    before = sorted(p.name for p in tmp_path.iterdir())
    caplog.clear()
    assert close_unfinished_runs(path, "p", now=5000.0) == []  # up's start-up step: no exception
    [moved] = aside(tmp_path, "history.sqlite", why)
    [line] = warnings(caplog)
    assert str(path) in line and said in line and moved.name in line
    assert "history.sqlite" in before and moved.name not in before
    history = History(path)
    history.record(Event("p", "w0", 6000.0, "start", pid=1))
    history.close()
    assert [(e.worker, e.pid) for e in read_events(path, project="p")] == [("w0", 1)]
    assert mode(path) == 0o600 and len(warnings(caplog)) == 1


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_readers_of_a_damaged_history_say_so_once_and_return_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    path = tmp_path / "history.sqlite"
    seeded_history(path)
    damage, why, said = DAMAGE[case]
    damage(path)
    caplog.clear()
    if case == "garbage_pages":  # a page no index-only read touches: found by a read of the rows
        assert read_events(path, project="p", limit=0) == []
    else:
        assert read_projects(path) == []
    [line] = warnings(caplog)
    assert said in line and len(aside(tmp_path, "history.sqlite", why)) == 1
    assert read_events(path) == [] and unfinished_starts(path, "p") == [] and read_projects(path) == []
    assert len(warnings(caplog)) == 1 and not path.exists()  # a reader creates nothing


def test_a_write_that_finds_damage_moves_the_file_aside_and_lands_in_a_fresh_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "history.sqlite"
    seeded_history(path)
    with open(path, "r+b") as f:  # the last page: the table's root and schema still read fine
        f.seek((path.stat().st_size // PAGE - 1) * PAGE)
        f.write(os.urandom(PAGE))
    history = History(path)  # no start-up check: the supervisor's own writer
    assert warnings(caplog) == []
    history.record(Event("p", "w", 9000.0, "start", pid=7))  # hits the damage: never raises
    history.record(Event("p", "w", 9001.0, "stop", pid=7, reason="requested", exit_status=0))
    history.close()
    assert [e.event for e in read_events(path)] == ["stop", "start"]
    assert len(aside(tmp_path, "history.sqlite", "corrupt")) == 1
    [line] = warnings(caplog)
    assert "is damaged" in line


@pytest.mark.parametrize("kind", ["symlink", "hardlink", "fifo", "wal_symlink", "lock_symlink"])
def test_history_never_opens_through_a_link(tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str) -> None:
    state = tmp_path / "state"
    state.mkdir()
    victim = tmp_path / "victim.sqlite"
    seeded_history(victim, rows=10)
    victim_bytes = victim.read_bytes()
    path = state / "history.sqlite"
    if kind == "symlink":
        path.symlink_to(victim)
    elif kind == "hardlink":
        os.link(victim, path)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "wal_symlink":
        (state / "history.sqlite-wal").symlink_to(tmp_path / "victim-wal")
    else:
        lock_path(path).symlink_to(victim)
    assert close_unfinished_runs(path, "p", now=5000.0) == []
    history = History(path)
    history.record(Event("p", "new", 6000.0, "start", pid=1))
    history.close()
    assert victim.read_bytes() == victim_bytes and not (tmp_path / "victim-wal").exists()
    assert [e.worker for e in read_events(path)] == ["new"]
    assert not path.is_symlink() and os.stat(path).st_nlink == 1 and mode(path) == 0o600
    [line] = warnings(caplog)
    assert "moved it aside" in line
    assert len(list(state.glob("*.unsafe-*"))) == 1


# -- history: a damaged file another process has open ----------------------------------------


_HOLDER = r"""
import sys, time
from pathlib import Path
from procguard.supervisor.history import History
history = History(Path(sys.argv[1]))
Path(sys.argv[2]).write_text("open")
while not Path(sys.argv[3]).exists():
    time.sleep(0.01)
history.close()
"""


def test_a_damaged_history_in_use_elsewhere_is_left_in_place_until_it_is_free(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, spawn: Any
) -> None:
    """Renaming an SQLite file another process has open would corrupt the fresh one: wait for it."""
    path = tmp_path / "history.sqlite"
    seeded_history(path)
    opened, release = tmp_path / "opened", tmp_path / "release"
    holder = spawn([PYTHON, "-c", _HOLDER, str(path), str(opened), str(release)], env=python_env())
    wait_for_file(opened, proc=holder)
    garbage_pages(path)
    caplog.clear()
    started = time.monotonic()
    history = History(path, verify=True)  # the start-up check finds it: never raises, never hangs
    assert time.monotonic() - started < 5
    history.record(Event("p", "lost", 6000.0, "start", pid=1))  # nowhere safe to write: dropped
    assert path.exists() and aside(tmp_path, "history.sqlite", "corrupt") == []  # not renamed under it
    [line] = warnings(caplog)
    assert "is damaged" in line and "another procguard process has it open" in line
    release.write_text("go")
    wait_for(lambda: holder.poll() is not None, message="the holder to close the history")
    history.record(Event("p", "kept", 6001.0, "start", pid=2))  # free now: moved aside, fresh file
    history.close()
    assert [e.worker for e in read_events(path)] == ["kept"]
    assert len(aside(tmp_path, "history.sqlite", "corrupt")) == 1
    assert len(warnings(caplog)) == 2 and "moved it aside" in warnings(caplog)[1]


def test_a_history_of_an_earlier_version_is_kept_and_gains_the_new_columns(tmp_path: Path) -> None:
    """A history written before stop rows had a detail and a 'by' is read as it is (those read None)
    and the writer adds the columns: an upgrade never moves a user's history aside."""
    import sqlite3

    from procguard.supervisor.history import Event, History, read_events

    path = tmp_path / "history.sqlite"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, project TEXT NOT NULL, worker TEXT NOT NULL,"
        " time REAL NOT NULL, event TEXT NOT NULL, pid INTEGER, reason TEXT, exit_status INTEGER,"
        " runtime_seconds REAL, peak_memory_bytes INTEGER);"
        "INSERT INTO events (project, worker, time, event, pid, reason, exit_status)"
        " VALUES ('p', 'w', 1.0, 'stop', 42, 'requested', 0);"
    )
    db.commit()
    db.close()
    (old,) = read_events(path, project="p")
    assert (old.reason, old.detail, old.by) == ("requested", None, None)
    history = History(path)
    try:
        history.record(Event("p", "w", 2.0, "stop", pid=43, reason="stopped", exit_status=143,
                             detail="procguard stop", by="operator"))
    finally:
        history.close()
    new, old = read_events(path, project="p")
    assert (new.reason, new.detail, new.by) == ("stopped", "procguard stop", "operator")
    assert old.pid == 42 and not list(tmp_path.glob("history.sqlite.corrupt-*"))
