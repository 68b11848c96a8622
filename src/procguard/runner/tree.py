"""The command's process tree as the command-mode runner sees it: read from /proc, signalled by pidfd.

Why not :class:`procguard.sampler.ResourceSampler` and :mod:`procguard.proctree`:
both stand on psutil, which with what it imports adds about 3 MB to a runner
whose whole budget beside the command is 15 MB. The tree is walked through
the kernel's ``/proc/PID/task/TID/children`` lists
(:func:`procguard.instances.childproc.tree_pids`), each process read from
its ``/proc/PID/stat`` (:mod:`procguard.procstat`), and every signal goes
through a pidfd opened after the process's start time was checked, so a
recycled PID is never signalled. Limit decisions stay
:mod:`procguard.policy`'s; the figures mean what the in-process manager's do
(tree RSS; CPU averaged over a window of ``cpu_window_s``).
"""

from __future__ import annotations

import os
import select
import signal
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import NamedTuple

from ..instances.childproc import tree_pids
from ..procstat import CLOCK_TICKS, read_stat, total_memory


class TreeReading(NamedTuple):
    """One reading of the command's tree: what /health, /metrics and the limit checks use.

    ``memory_bytes`` is the RSS of the whole tree; ``cpu_percent`` the
    tree's CPU averaged over the last ``cpu_window_s`` seconds (0 until two
    readings exist); ``num_threads`` the command's own threads.
    """

    taken_at: float
    memory_bytes: int
    memory_percent: float
    cpu_percent: float
    cpu_window_s: float
    num_threads: int
    num_children: int


class TreeSampler:
    """Reads the tree under ``root`` (its memory, threads and windowed CPU) at each :meth:`sample`."""

    def __init__(
        self, root: int, *, cpu_window_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.root = root
        self.cpu_window_s = max(0.0, cpu_window_s)
        self._clock = clock
        self._total_ram = total_memory() or 1
        self._cpu_last: dict[int, tuple[int, int]] = {}  # pid -> (start ticks, cpu ticks)
        self._cpu_total = 0
        self._first = True
        self._window: deque[tuple[float, int]] = deque()

    def sample(self) -> TreeReading | None:
        """A fresh reading; None once the root is gone (or is a zombie)."""
        pids = tree_pids(self.root)
        rows = []
        for pid in pids:
            stat = read_stat(pid)
            if stat is None or (pid == self.root and stat.exited):
                if pid == self.root:
                    return None
                continue
            rows.append((pid, stat))
        if not rows:
            return None
        now = self._clock()
        fresh: dict[int, tuple[int, int]] = {}
        delta = 0
        for pid, stat in rows:
            fresh[pid] = (stat.start_ticks, stat.cpu_ticks)
            known = self._cpu_last.get(pid)
            before = known[1] if known is not None and known[0] == stat.start_ticks else 0
            if not self._first:  # a process new since the last reading brings all its CPU time
                delta += max(0, stat.cpu_ticks - before)
        self._cpu_last = fresh
        self._first = False
        self._cpu_total += delta
        window = self._window
        window.append((now, self._cpu_total))
        while len(window) > 2 and window[1][0] <= now - self.cpu_window_s:
            window.popleft()
        covered = now - window[0][0]
        cpu = (self._cpu_total - window[0][1]) / CLOCK_TICKS / covered * 100.0 if covered > 0 else 0.0
        memory = sum(stat.rss_bytes for _pid, stat in rows)
        return TreeReading(
            taken_at=now,
            memory_bytes=memory,
            memory_percent=memory / self._total_ram * 100.0,
            cpu_percent=cpu,
            cpu_window_s=covered,
            num_threads=rows[0][1].num_threads,
            num_children=len(rows) - 1,
        )


def _open(pid: int) -> int | None:
    """A pidfd on ``pid`` as it is now (its start time checked after the open), or None if it is gone."""
    before = read_stat(pid)
    if before is None or before.exited:
        return None
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return None
    after = read_stat(pid)
    if after is None or after.start_ticks != before.start_ticks:
        os.close(fd)
        return None
    return fd


def open_all(pids: Iterable[int]) -> list[tuple[int, int]]:
    """``(pid, pidfd)`` of those of ``pids`` still running."""
    found = []
    for pid in pids:
        fd = _open(pid)
        if fd is not None:
            found.append((pid, fd))
    return found


def _signal_all(handles: list[tuple[int, int]], sig: int) -> None:
    for _pid, fd in handles:
        try:
            signal.pidfd_send_signal(fd, sig)
        except OSError:  # already gone
            pass


def _gone(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def kill_tree(root: int) -> None:
    """SIGKILL ``root`` and every descendant, now."""
    handles = open_all(tree_pids(root))
    try:
        _signal_all(handles, signal.SIGKILL)
    finally:
        for _pid, fd in handles:
            os.close(fd)


def stop_pids(pids: Iterable[int], grace_s: float) -> None:
    """SIGTERM ``pids``, wait up to ``grace_s`` for them to exit, SIGKILL those left."""
    handles = open_all(pids)
    try:
        _signal_all(handles, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        alive = [(pid, fd) for pid, fd in handles if not _gone(fd)]
        while alive and time.monotonic() < deadline:
            time.sleep(0.02)
            alive = [(pid, fd) for pid, fd in alive if not _gone(fd)]
        _signal_all(alive, signal.SIGKILL)
    finally:
        for _pid, fd in handles:
            os.close(fd)
