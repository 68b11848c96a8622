"""Process bookkeeping for the benchmark: nothing it starts may outlive it.

The harness makes itself a child subreaper, so managers that daemonize (PM2's
God daemon, ``procguard up --detach``) and the orphans a SIGKILLed manager
leaves behind are re-parented to the harness instead of init. Its own
descendants are then exactly the processes the benchmark is responsible for:
``sweep()`` ends them by PID (never by name), and ``reap()`` collects the
zombies of orphans that exit while re-parented here.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable

import psutil

log = logging.getLogger(__name__)

_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (Linux >= 3.4)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def descendants() -> list[psutil.Process]:
    """Every live process below the harness (its responsibility, thanks to the subreaper)."""
    try:
        return psutil.Process().children(recursive=True)
    except psutil.Error:
        return []


#: Direct children a ``subprocess.Popen`` object will wait for itself (see ``popen``).
_popen_pids: set[int] = set()


def popen(argv: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
    """Start a child that the caller waits for; ``reap()`` leaves it to its ``Popen``."""
    proc: subprocess.Popen[bytes] = subprocess.Popen(argv, **kwargs)  # type: ignore[call-overload]
    _popen_pids.add(proc.pid)
    return proc


def reap(keep: Iterable[int] = ()) -> None:
    """Collect exited direct children except ``keep`` and those started with ``popen()``."""
    keep_set = set(keep) | _popen_pids
    for proc in psutil.Process().children():
        if proc.pid in keep_set:
            continue
        try:
            os.waitpid(proc.pid, os.WNOHANG)
        except ChildProcessError:
            pass


def is_alive(pid: int) -> bool:
    """True if ``pid`` runs and is not a zombie."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def rss_of(pids: Iterable[int]) -> int:
    """Summed RSS in bytes of the live processes among ``pids``."""
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.Error:
            pass
    return total


def cpu_seconds_of(pids: Iterable[int]) -> float:
    """Summed user+system CPU seconds of the live processes among ``pids``."""
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def cpu_ns_of(pids: Iterable[int]) -> dict[int, int]:
    """PID -> nanoseconds on CPU summed over its live threads (/proc/PID/task/TID/schedstat).

    The scheduler's own nanosecond clock, not the 10 ms ticks of /proc/PID/stat:
    idle managers use a few ms per second, where ticks are mostly rounding.
    Threads that exited are not counted (their time is gone from /proc).
    """
    found: dict[int, int] = {}
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        total = 0
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                    total += int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass
        found[pid] = total
    return found


def tree_pids(root: int) -> list[int]:
    """``root`` and its live descendants."""
    try:
        proc = psutil.Process(root)
        return [root, *(p.pid for p in proc.children(recursive=True))]
    except psutil.Error:
        return []


def signal_pid(pid: int, sig: int) -> bool:
    """Send ``sig`` to one PID the harness started or inherited; False if it is gone."""
    if pid <= 1:
        msg = f"refusing to signal pid {pid}"
        raise ValueError(msg)
    try:
        os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False


def sweep(grace_s: float = 3.0, keep: Iterable[int] = ()) -> list[int]:
    """SIGTERM every descendant, wait ``grace_s``, SIGKILL the rest, reap. Returns the PIDs found."""
    reap(keep)
    procs = [p for p in descendants() if is_alive(p.pid)]
    found = [p.pid for p in procs]
    for p in procs:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.Error:
            pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(is_alive(p.pid) for p in procs):
        reap(keep)
        time.sleep(0.05)
    for p in procs:
        if is_alive(p.pid):
            try:
                p.kill()
            except psutil.Error:
                pass
    for _ in range(40):
        reap(keep)
        if not any(is_alive(p.pid) for p in descendants()):
            break
        time.sleep(0.05)
    return found


def run(argv: list[str], *, env: dict[str, str] | None = None, timeout: float = 120.0,
        cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a control command (supervisorctl, circusctl, pm2, procguard) to completion."""
    log.debug("run %s", " ".join(argv))
    return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          check=False, stdin=subprocess.DEVNULL)


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.02) -> bool:
    """Poll ``predicate()`` until true or ``timeout`` s pass (monotonic); reaps meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        reap()
        time.sleep(interval)
