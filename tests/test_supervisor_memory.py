"""The supervisor's memory guard of a directly run command: a graceful recycle before the hard ceiling.

A ``command`` worker without a health port is watched from outside by
``procguard up`` itself. At the default settings it samples every worker
every 2 s; a worker near its limit (or growing towards it) is sampled at
0.25 s, and every 0.05 s while its strikes are counted
(procguard.policy.next_sample_delay), so a steady leak is recycled with
SIGTERM well before the hard ceiling (1.25 x the limit).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from procguard.supervisor.history import db_path, read_events
from procguard.supervisor.settings import TUNING_ENV, Settings

from .helpers import wait_for
from .supervisor_workers.stackkit import Stack, lines, worker_cmd, write_config

MIB = 1024 * 1024
FAST = "start_period_s=0.3,sample_interval_s=0.2"


def _runs(path: Path) -> tuple[list[int], dict[int, int]]:
    """Pids in start order, and pid -> peak RSS of the runs that stopped gracefully."""
    started, graceful = [], {}
    for line in lines(path):
        parts = line.split()
        if parts[0] == "start":
            started.append(int(parts[1]))
        elif parts[0] == "term":
            graceful[int(parts[1])] = int(parts[2])
    return started, graceful


def _wait_restart(stack: Stack, record: Path, *, timeout: float) -> None:
    def restarted() -> bool:
        if stack.proc is not None and stack.proc.poll() is not None:
            raise AssertionError(f"procguard up exited {stack.proc.returncode}: {stack.output()[-3000:]}")
        return len(_runs(record)[0]) >= 2

    wait_for(restarted, timeout=timeout, interval=0.05,
             message=lambda: f"a restart of the leaker; record={lines(record)}; {stack.output()[-3000:]}")


def _stops(stack: Stack) -> list[Any]:
    events = read_events(db_path(stack.state_dir), project=stack.project, limit=0)
    return sorted((e for e in events if e.event == "stop"), key=lambda e: e.time)


@pytest.mark.slow
def test_a_steady_leak_is_recycled_gracefully_at_default_settings(
    tmp_path: Path, state_dir: Path, spawn: Any
) -> None:
    record = tmp_path / "leak"
    # 80 MiB at start, then 20 MB/s; its SIGTERM handler needs 0.2 s (still leaking) to finish.
    # start_limit = 1: a stop counted as a failure would make it FATAL at once, not restart it.
    config = write_config(tmp_path, {
        "leaker": {"command": worker_cmd("leaker.py", record, 80, 20, 0.2), "memory_limit": "200MB",
                   "start_limit": 1},
    })
    stack = Stack(config, state_dir, spawn)  # no tuning: the supervisor's own defaults
    stack.env.pop(TUNING_ENV, None)
    assert Settings.from_env(stack.env) == Settings()
    stack.up()
    _wait_restart(stack, record, timeout=60)
    started, graceful = _runs(record)
    first = started[0]
    assert first in graceful, f"the first run was not stopped gracefully (SIGKILL?): {lines(record)}"
    peak = graceful[first]
    hard = 250 * MIB
    assert 200 * MIB < peak < hard - 15 * MIB, f"peak RSS {peak / MIB:.1f} MiB"
    stops = _stops(stack)
    assert stops, "no stop in the history"
    assert (stops[0].pid, stops[0].reason, stops[0].exit_status) == (first, "memory_limit", 0)
    worker = stack.wait_state("leaker", "starting", "running")
    assert worker["restarts"] >= 1 and worker["last_exit"]["signal"] is None
    assert worker["next_start_in_seconds"] is None  # restarted at once, no backoff
    assert "hard ceiling" not in stack.output()


def test_the_hard_ceiling_still_kills_a_worker_that_keeps_leaking_while_stopping(
    tmp_path: Path, state_dir: Path, spawn: Any
) -> None:
    record = tmp_path / "leak"
    # 50 MB/s, and a SIGTERM handler that would take 30 s: past 125 MiB it must be killed, not waited for.
    config = write_config(tmp_path, {
        "leaker": {"command": worker_cmd("leaker.py", record, 20, 50, 30), "memory_limit": "100MB",
                   "grace": "60s", "start_limit": 3},
    })
    stack = Stack(config, state_dir, spawn, tuning=FAST)
    stack.up()
    _wait_restart(stack, record, timeout=30)
    started, graceful = _runs(record)
    assert started[0] not in graceful
    stops = _stops(stack)
    assert (stops[0].pid, stops[0].reason, stops[0].exit_status) == (started[0], "hard_memory_limit", 137)
    assert stops[0].by == "procguard" and "over the hard ceiling" in (stops[0].detail or "")
    assert stops[0].runtime_seconds < 30  # killed at the ceiling, not after the grace
    assert "over the hard ceiling" in stack.output()
    # Not a planned recycle (that was the graceful stop it failed to reach): a failure, restarted
    # at once the first time, counted towards the start limit like a crash.
    worker = stack.wait_state("leaker", "starting", "running", "backoff")
    assert worker["restarts"] >= 1 and worker["last_exit"]["reason"] == "hard_memory_limit"


@pytest.mark.slow
def test_at_default_settings_the_sigterm_comes_just_after_the_crossing(
    tmp_path: Path, state_dir: Path, spawn: Any
) -> None:
    """The samples close in on the crossing and the strikes are counted tens of ms apart.

    Three leaks (20 MB, then 20 MB/s against 100 MB, stopping at SIGTERM): each is a graceful
    memory_limit recycle, and the median time from the worker's first RSS over the limit to
    its SIGTERM is well under the near-limit pace (0.25 s) that bounded it before. The tight
    figures (<= 100 ms, peak <= 1.02 x) are measured by bench/bench_supervisor_guard.py.
    """
    record = tmp_path / "leak"
    config = write_config(tmp_path, {
        "leaker": {"command": worker_cmd("leaker.py", record, 20, 20, 0, 100), "memory_limit": "100MB",
                   "start_limit": 10},
    })
    stack = Stack(config, state_dir, spawn)
    stack.env.pop(TUNING_ENV, None)
    stack.up()

    def events(kind: str) -> dict[int, float]:
        return {int(p[1]): float(p[2]) for p in (ln.split() for ln in lines(record)) if p[0] == kind}

    def three_stopped() -> bool:
        if stack.proc is not None and stack.proc.poll() is not None:
            raise AssertionError(f"procguard up exited {stack.proc.returncode}: {stack.output()[-3000:]}")
        return len(_runs(record)[1]) >= 3

    wait_for(three_stopped, timeout=60, interval=0.1,
             message=lambda: f"three recycles; record={lines(record)}; {stack.output()[-3000:]}")
    crossed, termed = events("cross"), events("sigterm")
    started, graceful = _runs(record)
    first = started[:3]
    delays = sorted(termed[pid] - crossed[pid] for pid in first)
    assert all(d >= 0 for d in delays), delays
    assert delays[1] < 0.15, f"SIGTERM after crossing: {delays}"
    assert all(graceful[pid] <= 110 * MIB for pid in first), [graceful[pid] / MIB for pid in first]
    # The worker's own record of its stop comes a moment before the supervisor's history row.
    stops = wait_for(lambda: (found := _stops(stack))[2:] and found[:3], timeout=30,
                     message=lambda: f"three stop rows in the history: {_stops(stack)}")
    assert [(s.pid, s.reason) for s in stops] == [(pid, "memory_limit") for pid in first]
