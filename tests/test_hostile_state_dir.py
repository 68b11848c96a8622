"""Nothing in the state directory stops ``procguard up -d`` or makes ``procguard history`` fail.

Each case plants damaged or hostile files in a fresh state directory, then
starts a real stack with ``up -d`` and checks: it started, each bad thing
was named in exactly one warning line (on up's terminal or in
supervisor.log), nothing was written through a link, and ``history``
works afterwards.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from procguard.supervisor.history import db_path, read_events

from .helpers import stop_process_tree
from .hostile_state import DAMAGE, HOSTILE, Planted, seeded_history
from .supervisor_workers.stackkit import Stack, worker_cmd, write_config

FAST = "start_period_s=0.3,sample_interval_s=0.2"
#: Unique to this run: an ``up`` stops stale processes of its project name, and other
#: suites may run stacks named ``teststack`` on this machine at the same time.
PROJECT = f"hostile{os.getpid()}"


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


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_up_detach_moves_hostile_files_aside_and_never_writes_through_them(
    stack: Stack, tmp_path: Path, case: str
) -> None:
    planted = Planted()
    HOSTILE[case](stack.state_dir, tmp_path, planted, PROJECT)
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
