"""Row 3: many starts of one name at the same moment; exactly one instance may run.

Each round launches ``starts`` copies of ``procguard run --name NAME -- sleep``
at once (the same name every round, so each round also meets the lock file
the previous one left), waits until all but the running ones have given up,
and counts the instances running: the runners still alive and the ``sleep``
commands carrying NAME's marker of this state directory. A round fails
unless both counts are exactly 1 and every refused start exited 3 ("already
running"). The instance is then stopped with SIGTERM by PID.
"""

from __future__ import annotations

import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil
from tests.helpers import python_env

from procguard.instances.identity import find_marked
from procguard.instances.statedir import namespace_of
from procguard.reasons import ExitStatus

from .harness import PROCGUARD, ROOT, RowResult, Tally, alive, stop

NAME = "single"
#: How long the refused starts may take to give up, all together, on a busy 2-core machine.
SETTLE_S = 90.0

Launch = Callable[[Path], list[str]]


def procguard_start(state: Path) -> list[str]:
    return [*PROCGUARD, "run", "--name", NAME, "--health-port", "0", "--", "sleep", "3600"]


def _marked(state: Path) -> list[psutil.Process]:
    return [p for p in find_marked(NAME, namespace=namespace_of(state)) if alive(p)]


def start_round(starts: int, state: Path, *, launch: Launch = procguard_start,
                settled: list[float] | None = None, settle_s: float = SETTLE_S) -> list[str]:
    """Start ``starts`` copies at once; the round passes when exactly one instance runs."""
    env = python_env(PROCGUARD_STATE_DIR=str(state), PROCGUARD_LOG_LEVEL="WARNING")
    argv = launch(state)
    t0 = time.monotonic()
    procs = [subprocess.Popen(argv, env=env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE) for _ in range(starts)]
    try:
        deadline = t0 + settle_s
        while sum(p.poll() is None for p in procs) > 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        running = [p for p in procs if p.poll() is None]
        if len(running) == 1 and settled is not None:
            settled.append(time.monotonic() - t0)
        marked = _marked(state)
        while len(running) == 1 and not marked and running[0].poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)  # the one that won may not have started its command yet
            marked = _marked(state)
        problems = []
        if len(running) != 1:
            problems.append(f"{len(running)} of {starts} starts still running after {settle_s:g} s")
        if len(marked) != 1:
            problems.append(f"{len(marked)} marked '{NAME}' processes running (pids {[p.pid for p in marked]})")
        for proc in procs:
            if proc.poll() is not None and proc.returncode != ExitStatus.ALREADY_RUNNING:
                err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
                problems.append(f"a refused start exited {proc.returncode} (expected {int(ExitStatus.ALREADY_RUNNING)}):"
                                f" {err[-200:]}")
        return problems
    finally:
        for proc in procs:
            stop(proc, grace=10)
            if proc.stderr is not None:
                proc.stderr.close()


def run_concurrent_starts(rounds: int, starts: int, work: Path) -> RowResult:
    started = time.monotonic()
    tally = Tally()
    settled: list[float] = []
    state = work / "state"
    for _ in range(rounds):
        tally.attempt(lambda: start_round(starts, state, settled=settled))
    figures = (f"exactly 1 instance running in {tally.tried - tally.failed} of {tally.tried} rounds; "
               f"the {starts - 1} refused starts all gone "
               f"{statistics.median(settled) if settled else float('nan'):.1f} s after launch (median)")
    return RowResult(3, f"{starts} `procguard run --name {NAME} -- sleep` started at the same moment, "
                     "the same name every round", f"{tally.tried} rounds x {starts} starts", tally.failed, figures,
                     time.monotonic() - started, tally.problems)
