"""What every row of the reliability bench shares: counting, the row's result, process hygiene.

A row tries something many times and counts the tries that went wrong. A
try that cannot even be carried out (a worker that never started, a
timeout) raises; :class:`Tally` counts that as a failure too, with the
reason kept, so a broken set-up can never pass for a clean result.

The bench process is a child subreaper: whatever a row starts and loses
track of (a double-forked grandchild, a detached supervisor) is re-parented
here, so :func:`leftovers` sees it and stops it by PID after every row.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from tests.helpers import stop_process_tree

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
PROCGUARD = [PYTHON, "-m", "procguard"]


@dataclass
class Tally:
    """Tries and failures of one row; the first ``keep`` distinct problems are kept, each with its count."""

    tried: int = 0
    failed: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    keep: int = 8

    @property
    def problems(self) -> list[str]:
        return [problem + (f" (x{n})" if n > 1 else "") for problem, n in self.counts.items()]

    def attempt(self, check: Callable[[], Iterable[str]]) -> list[str]:
        """Run one try; it fails when ``check`` returns problems or raises."""
        self.tried += 1
        try:
            problems = list(check())
        except Exception as exc:  # a try that could not be carried out is a failed try, never a pass
            problems = [f"{type(exc).__name__}: {str(exc)[:500]}"]
        self.record(problems, tried=False)
        return problems

    def record(self, problems: Iterable[str], *, tried: bool = True) -> None:
        """Count one try whose outcome is already known (no problems: it passed)."""
        problems = list(problems)
        if tried:
            self.tried += 1
        if problems:
            self.failed += 1
        for problem in problems:
            if problem in self.counts or len(self.counts) < self.keep:
                self.counts[problem] += 1


@dataclass
class RowResult:
    """One line of the table: what was tried, how many tries failed, what was measured."""

    number: int
    title: str
    tried: str
    failed: int
    measured: str
    seconds: float
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.failed == 0


def alive(proc: psutil.Process) -> bool:
    """The very process (PID and start time) still runs and is not a zombie."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def family_of(pid: int) -> list[psutil.Process]:
    """``pid`` and all its descendants now (identities: a recycled PID never counts)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def processes(pids: Iterable[int]) -> list[psutil.Process]:
    found = []
    for pid in pids:
        try:
            found.append(psutil.Process(pid))
        except psutil.Error:
            pass
    return found


def wait_gone(procs: list[psutil.Process], timeout: float) -> tuple[float | None, list[psutil.Process]]:
    """Seconds until none of ``procs`` runs (None if some still run after ``timeout``), and those left."""
    start = time.monotonic()
    while True:
        left = [p for p in procs if alive(p)]
        elapsed = time.monotonic() - start
        if not left:
            return elapsed, []
        if elapsed >= timeout:
            return None, left
        time.sleep(0.01)


def kill_all(procs: Iterable[psutil.Process]) -> None:
    """SIGKILL each process that is still the same process, then reap our own children among them."""
    procs = [p for p in procs if alive(p)]
    for proc in procs:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=10)
    reap()


def reap() -> None:
    """Collect exited children adopted as subreaper (Popen objects reap their own)."""
    for child in psutil.Process().children():
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                os.waitpid(child.pid, os.WNOHANG)
        except (psutil.Error, ChildProcessError):
            pass


def leftovers(keep: Iterable[int] = ()) -> list[str]:
    """Stop (by PID) every descendant still running after a row; describe each one stopped."""
    kept = set(keep)
    found = [p for p in psutil.Process().children(recursive=True) if p.pid not in kept and alive(p)]
    described = []
    for proc in found:
        try:
            described.append(f"{proc.pid} {' '.join(proc.cmdline())[:120]}")
        except psutil.Error:
            described.append(str(proc.pid))
    kill_all(found)
    return described


def stop(proc: subprocess.Popen[bytes] | subprocess.Popen[str] | None, *, grace: float = 5.0) -> None:
    """Stop a process this bench started and its descendants: SIGTERM, ``grace``, SIGKILL, reap."""
    if proc is not None:
        stop_process_tree(proc, grace=grace)


def cli(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """One ``procguard`` command, its output captured."""
    return subprocess.run([*PROCGUARD, *args], env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)


def one_line(text: str, limit: int = 300) -> str:
    """A child's output, squeezed into one line of a problem report."""
    return " | ".join(line for line in text.strip().splitlines() if line)[-limit:]


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank); nan when there is nothing to rank."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]
