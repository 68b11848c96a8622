"""Cheap memory and CPU readings of a worker's process tree, read from /proc.

Why not :class:`procguard.sampler.ResourceSampler` or psutil's
``children(recursive=True)``: both find descendants by listing every
process on the machine (``/proc``), once per sampler per tick. A supervisor
sampling 50 workers every couple of seconds would do that 50 times per
tick. Here a tree is walked through the kernel's own
``/proc/PID/task/TID/children`` lists, so the cost is proportional to the
worker's own processes. Where that file does not exist (kernels without
CONFIG_PROC_CHILDREN) the walk falls back to psutil. Limit *decisions* are
still :mod:`procguard.policy`'s.

The files of a process stay open between samples (:class:`_ProcFiles`) and
are read again from offset 0 with ``pread``: one system call per file
instead of the path lookup, open, read and close of each fresh open (the
open was most of a sample's cost: measured with ``strace -c`` on a
supervisor of 50 idle workers, 23 system calls per worker per sample before,
2 after). A single-threaded process's children are all in its main
thread's list, so the task directory is listed only for processes with
more threads. A descriptor also stays bound to the process it was opened
on: once that process is reaped a read fails, where a path could name a new
process that reused the pid.
"""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Callable
from typing import NamedTuple

from ..instances.childproc import MAX_TREE, direct_children
from ..policy import GrowthBase
from ..procstat import CLOCK_TICKS, ProcStat, parse_stat, read_stat

#: At most this many processes of one tree keep their files open between samples
#: (two descriptors each); the others are opened, read and closed at each sample.
MAX_OPEN_PER_TREE = 16
_READ = 4096




def _open(path: str) -> int | None:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


def _pread(fd: int) -> bytes | None:
    try:
        return os.pread(fd, _READ, 0)
    except OSError:
        return None  # the process is gone (reaped: ESRCH)


class _ProcFiles:
    """One process's ``stat`` and main-thread ``children`` files, kept open and re-read."""

    __slots__ = ("children_fd", "stat_fd")

    def __init__(self, pid: int) -> None:
        self.stat_fd = _open(f"/proc/{pid}/stat")
        self.children_fd = _open(f"/proc/{pid}/task/{pid}/children") if self.stat_fd is not None else None

    def stat(self) -> ProcStat | None:
        data = None if self.stat_fd is None else _pread(self.stat_fd)
        return None if data is None else parse_stat(data)

    def children(self, pid: int, threads: int) -> list[int]:
        """The direct children; the main thread's list alone when there is one thread."""
        if threads == 1 and self.children_fd is not None:
            data = _pread(self.children_fd)
            if data is not None and len(data) < _READ:
                return [int(part) for part in data.split()]
        return direct_children(pid)  # threads (or a long list): every thread's list, read whole

    def close(self) -> None:
        for fd in (self.stat_fd, self.children_fd):
            if fd is not None:
                os.close(fd)
        self.stat_fd = self.children_fd = None


class TreeSample(NamedTuple):
    """One reading of a process tree: RSS summed, CPU in percent of one core.

    ``cpu_percent`` is the average since the previous sample (for charts);
    ``window_cpu_percent`` the average over the last ``cpu_window_s`` seconds
    (what a CPU limit is judged on, never a single reading); ``cpu_seconds``
    the CPU time of the processes in the tree now. A named tuple: one is made
    per worker per sample, at a third of a frozen dataclass's cost.
    """

    memory_bytes: int
    cpu_percent: float
    num_processes: int
    window_cpu_percent: float = 0.0
    cpu_window_s: float = 0.0
    cpu_seconds: float = 0.0


class LimitSample:
    """The view of a :class:`TreeSample` that :class:`procguard.policy.LimitTracker` reads."""

    def __init__(self, sample: TreeSample) -> None:
        self.memory_bytes = sample.memory_bytes
        self.cpu_percent = sample.window_cpu_percent
        self.cpu_window_s = sample.cpu_window_s


class TreeSampler:
    """Samples the process tree under one pid (minus the subtrees :meth:`set_excluded` names)."""

    def __init__(
        self, root_pid: int, *, cpu_window_s: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.root_pid = root_pid
        self.cpu_window_s = cpu_window_s
        self._clock = clock
        self._last: tuple[float, int] | None = None
        self._window: collections.deque[tuple[float, int]] = collections.deque()
        self._excluded: frozenset[int] = frozenset()
        self._open: dict[int, _ProcFiles] = {}  # pid -> its files, for the processes of the last sample
        self._growth = GrowthBase()
        #: ``(time, memory bytes)`` of the earlier sample the last one's growth is measured from.
        self.growth_from: tuple[float, int] | None = None

    def set_excluded(self, pids: frozenset[int] | set[int]) -> None:
        """Leave these descendants (and theirs) out of the figures, e.g. procguard's own helpers.

        The same meaning as :meth:`procguard.sampler.ResourceSampler.set_excluded`:
        a worker's memory and CPU are its own tree's, never those of a function
        worker's health responder. The root itself is always counted.
        """
        self._excluded = frozenset(pids) - {self.root_pid}

    def sample(self) -> TreeSample | None:
        """A fresh reading, or None when the root process is gone."""
        ticks = memory = count = 0
        opened = self._open
        kept: dict[int, _ProcFiles] = {}
        excluded = self._excluded
        pids = [self.root_pid]
        for pid in pids:  # breadth first: the list grows as children are found
            read = _read(pid, opened, kept)
            if read is None:
                continue
            stat, children = read
            ticks += stat.cpu_ticks
            memory += stat.rss_bytes
            count += 1
            if children and len(pids) < MAX_TREE:
                pids.extend(child for child in children if child not in excluded)
        for gone in opened.values():  # processes that left the tree since the last sample
            gone.close()
        self._open = kept
        if count == 0:
            return None
        now = self._clock()
        self.growth_from = self._growth.push(now, memory)
        cpu = _percent(self._last, now, ticks)
        self._last = (now, ticks)
        window = self._window
        window.append((now, ticks))
        while len(window) > 2 and window[1][0] <= now - self.cpu_window_s:
            window.popleft()
        return TreeSample(
            memory_bytes=memory,
            cpu_percent=cpu,
            num_processes=count,
            window_cpu_percent=_percent(window[0], now, ticks),
            cpu_window_s=now - window[0][0],
            cpu_seconds=ticks / CLOCK_TICKS,
        )

    @property
    def taken_at(self) -> float | None:
        """When the last sample was taken (the sampler's clock), None before the first."""
        return None if self._last is None else self._last[0]

    def close(self) -> None:
        """Close the files kept open between samples (the sampler can still sample: they reopen)."""
        opened, self._open = self._open, {}
        for files in opened.values():
            files.close()

    def __del__(self) -> None:
        # A sampler dropped without close() (its worker's process is gone) gives its descriptors back.
        self.close()


def _read(
    pid: int, opened: dict[int, _ProcFiles], kept: dict[int, _ProcFiles]
) -> tuple[ProcStat, list[int]] | None:
    """One process's stat and direct children (None when it is gone), through its kept files.

    ``opened``: the files kept from the last sample (taken out as used);
    ``kept``: the files to keep for the next one (added here, up to the cap).
    """
    files = opened.pop(pid, None)
    if files is not None:
        stat = files.stat()
        if stat is not None:
            kept[pid] = files
            return stat, files.children(pid, stat.num_threads)
        files.close()  # that process is gone; its pid may name a new one now
    if len(kept) < MAX_OPEN_PER_TREE:
        files = _ProcFiles(pid)
        stat = files.stat()
        if stat is None:
            files.close()
            return None
        kept[pid] = files
        return stat, files.children(pid, stat.num_threads)
    stat = read_stat(pid)
    return None if stat is None else (stat, direct_children(pid))


def _percent(since: tuple[float, int] | None, now: float, ticks: int) -> float:
    if since is None or now <= since[0]:
        return 0.0
    return max(0.0, (ticks - since[1]) / CLOCK_TICKS / (now - since[0]) * 100.0)
