"""Nothing in the state directory stops ``procguard up -d`` or makes ``procguard history`` fail.

Each case plants damaged or hostile files in a fresh state directory, then
starts a real stack with ``up -d`` and checks: it started, each bad thing
was named in exactly one warning line (on up's terminal or in
supervisor.log), nothing was written through a link, and ``history``
works afterwards.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from procguard.supervisor.history import db_path, read_events

from .helpers import stop_process_tree
from .hostile_state import DAMAGE, seeded_history
from .supervisor_workers.stackkit import Stack, worker_cmd, write_config

FAST = "start_period_s=0.3,sample_interval_s=0.2"
#: Unique to this run: an ``up`` stops stale processes of its project name, and other
#: suites may run stacks named ``teststack`` on this machine at the same time.
PROJECT = f"hostile{os.getpid()}"


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


@pytest.fixture
def stack(tmp_path: Path, state_dir: Path, spawn: Any) -> Iterator[Stack]:
    """A one-worker stack; whatever ``up -d`` started is brought down at teardown."""
    config = write_config(tmp_path, {"ticker": {"command": worker_cmd("ticker.py", tmp_path / "ticks")}},
                          project=PROJECT, defaults={"grace": "5s"})
    state_dir.mkdir(mode=0o700)
    made = Stack(config, state_dir, spawn, project=PROJECT, tuning=FAST)
    yield made
    made.cli("down", timeout=60)
    for proc in psutil.Process().children(recursive=True):
        try:
            if "--ready-fd" in proc.cmdline() and str(config) in proc.cmdline():
                stop_process_tree(proc, grace=5)
        except psutil.Error:
            pass


def warning_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if " WARNING " in line]


def start_and_check(stack: Stack, planted: Planted) -> None:
    """``up -d`` starts despite what was planted; one warning line per planted thing; nothing followed."""
    up = stack.cli("up", "-d", timeout=120)
    assert up.returncode == 0 and "started (supervisor PID" in up.stdout, (up.stdout, up.stderr)
    stack.wait_state("ticker", "running")
    log = stack.state_dir / "logs" / PROJECT / "supervisor.log"
    said = warning_lines(up.stderr) + warning_lines(log.read_text(errors="replace"))
    for expected in planted.warnings:
        matching = [line for line in said if expected in line]
        assert len(matching) == 1, (expected, said)
    assert len(said) == len(planted.warnings), said
    assert "Traceback" not in up.stderr + log.read_text(errors="replace")
    assert planted.untouched() == []
    history = stack.cli("history", "--json")
    assert history.returncode == 0 and history.stderr == "", history.stderr
    assert '"worker": "ticker"' in history.stdout and '"event": "start"' in history.stdout
    assert stack.cli("down").returncode == 0
    events = read_events(db_path(stack.state_dir), project=PROJECT)
    assert [e.event for e in events][:2] == ["stop", "start"]


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_up_detach_starts_with_a_fresh_history_whatever_the_old_one_is(stack: Stack, case: str) -> None:
    path = db_path(stack.state_dir)
    seeded_history(path, project=PROJECT)
    damage, why, said = DAMAGE[case]
    damage(path)
    start_and_check(stack, Planted(warnings=[f"{path} {said}"]))
    assert len([p for p in stack.state_dir.glob(f"history.sqlite.{why}-*")
                if not p.name.endswith(("-wal", "-shm"))]) == 1


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_history_command_on_a_damaged_history_says_so_in_one_line(stack: Stack, case: str) -> None:
    path = db_path(stack.state_dir)
    seeded_history(path, project=PROJECT)
    damage, _why, said = DAMAGE[case]
    damage(path)
    for argv in (["history", "-n", "0"], ["history", "--json", "-n", "0"]):
        result = stack.cli(*argv)
        assert result.returncode == 0 and "Traceback" not in result.stderr
        if argv[1] == "--json":
            assert result.stdout.strip() == "[]" and result.stderr == ""  # said once, by the first run
        else:
            [line] = result.stderr.splitlines()
            assert f"{path} {said}" in line and "moved it aside" in line


def _links(state: Path, tmp: Path, planted: Planted) -> None:
    """Symlinks where history.sqlite, a worker's log and supervisor.log belong; a directory at the socket."""
    logs = state / "logs" / PROJECT
    logs.mkdir(parents=True, mode=0o700)
    victim_db = tmp / "victim.sqlite"
    seeded_history(victim_db, rows=5, project="victim")
    planted.victims[victim_db] = (victim_db.read_bytes(), stat.S_IMODE(victim_db.stat().st_mode))
    (state / "history.sqlite").symlink_to(victim_db)
    (logs / "ticker.log").symlink_to(planted.victim(tmp / "victim.log"))
    (logs / "supervisor.log").symlink_to(planted.victim(tmp / "victim-supervisor.log"))
    (state / f"supervisor.{PROJECT}.sock").mkdir()
    planted.warnings += [f"{state}/history.sqlite is a symlink", f"{logs}/ticker.log is a symlink",
                         f"{logs}/supervisor.log is a symlink", f"{state}/supervisor.{PROJECT}.sock is not a socket"]


def _links_and_files(state: Path, tmp: Path, planted: Planted) -> None:
    """A file where logs/ belongs, a hard link at history.sqlite, a file at the socket, a link as the lock."""
    (state / "logs").write_text("not a directory\n")
    os.link(planted.victim(tmp / "victim-hardlinked"), state / "history.sqlite")
    (state / "history.sqlite.lock").symlink_to(planted.victim(tmp / "victim-lock"))
    (state / f"supervisor.{PROJECT}.sock").write_text("not a socket\n")
    planted.warnings += [f"{state}/logs is not a directory", f"{state}/history.sqlite has 2 hard links",
                         f"{state}/history.sqlite.lock is a symlink",
                         f"{state}/supervisor.{PROJECT}.sock is not a socket"]


def _fifos_and_dirs(state: Path, tmp: Path, planted: Planted) -> None:
    """A symlink where the stack's log directory belongs, FIFOs at history.sqlite and a worker's log."""
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    planted.victim(elsewhere / "ticker.log")
    (state / "logs").mkdir(mode=0o700)
    (state / "logs" / PROJECT).symlink_to(elsewhere)
    os.mkfifo(state / "history.sqlite")
    planted.warnings += [f"{state}/logs/{PROJECT} is a symlink", f"{state}/history.sqlite is not a regular file"]


def _companions(state: Path, tmp: Path, planted: Planted) -> None:
    """A good history whose -wal is a symlink; a worker log that is a FIFO; loose mode on logs/."""
    seeded_history(state / "history.sqlite", project=PROJECT)
    (state / "history.sqlite-wal").symlink_to(planted.victim(tmp / "victim-wal"))
    logs = state / "logs" / PROJECT
    logs.mkdir(parents=True, mode=0o700)
    (state / "logs").chmod(0o777)
    os.mkfifo(logs / "ticker.log")
    planted.warnings += ["history.sqlite-wal that is a symlink", f"{logs}/ticker.log is not a regular file",
                         f"{state}/logs was writable by group or others"]


HOSTILE: dict[str, Callable[[Path, Path, Planted], None]] = {
    "links": _links, "links_and_files": _links_and_files, "fifos_and_dirs": _fifos_and_dirs,
    "companions": _companions,
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_up_detach_moves_hostile_files_aside_and_never_writes_through_them(
    stack: Stack, tmp_path: Path, case: str
) -> None:
    planted = Planted()
    HOSTILE[case](stack.state_dir, tmp_path, planted)
    start_and_check(stack, planted)
    assert stack.cli("logs", "ticker").returncode == 0


def test_a_history_damaged_while_running_is_never_fatal(stack: Stack) -> None:
    up = stack.cli("up", "-d", timeout=120)
    assert up.returncode == 0, up.stderr
    first = stack.wait_state("ticker", "running")
    path = db_path(stack.state_dir)
    path.write_bytes(os.urandom(path.stat().st_size or 8192))  # garbage under the running writer
    restarted = stack.cli("restart", "ticker")
    assert restarted.returncode == 0, restarted.stderr
    stack.wait_worker("ticker", lambda w: w["state"] == "running" and w["pid"] != first["pid"],
                      what="running again with a new pid")
    history = stack.cli("history")
    assert history.returncode == 0 and "Traceback" not in history.stderr
    assert len(history.stderr.splitlines()) <= 1
    assert stack.cli("status").returncode == 0  # the supervisor is still there
    assert stack.cli("down").returncode == 0
    log = (stack.state_dir / "logs" / PROJECT / "supervisor.log").read_text(errors="replace")
    assert "Traceback" not in log
    again = stack.cli("up", "-d", timeout=120)  # and the next start is not stopped by it either
    assert again.returncode == 0, again.stderr
    stack.wait_state("ticker", "running")
