"""Resource samples of one process tree: memory, CPU over a window, threads.

``ResourceSampler(pid)`` works for the current process (the in-process
:class:`~procguard.manager.ProcessManager`) and for any other pid (the runner
and the supervisor watching a child from outside). Each :meth:`sample` reads
the tree's current memory and adds a point to the CPU window; the CPU figure
is always the average over the window, never one reading (psutil's first
``cpu_percent()`` is meaningless, and one busy tick says nothing).

It is built to be called several times a second for hours: on Linux it reads
``/proc/<pid>/stat`` once per process of the tree (RSS, CPU times, threads)
and finds descendants from a cached parent map that only learns about pids
it has not seen before, instead of re-reading every process on the machine
at each sample (what ``psutil.Process.children(recursive=True)`` does).
Elsewhere it falls back to psutil. On Linux psutil is not even imported
unless asked for (USS, the psutil backend) or to raise its
``NoSuchProcess`` once the root is gone: a function worker that never
needs it stays about 2 MB smaller.
"""

from __future__ import annotations

import collections
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from .procstat import PROC_ROOT, read_stat, total_memory

if TYPE_CHECKING:
    from types import ModuleType

    import psutil

log = logging.getLogger(__name__)

#: Default length of the CPU averaging window, seconds.
DEFAULT_CPU_WINDOW_S = 60.0
#: How often the process table is scanned for new descendants, seconds. Known
#: descendants are read at every sample; only the discovery of new ones waits
#: for the next scan (listing /proc is the most expensive step of a sample).
DEFAULT_SCAN_INTERVAL_S = 1.0

_LINUX = sys.platform.startswith("linux") and os.path.isdir(PROC_ROOT)


@dataclass(frozen=True)
class ResourceSample:
    """One reading of a process tree. Sizes in bytes, CPU in percent of one core."""

    pid: int
    taken_at: float
    #: RSS of the tree (root + descendants) or of the root alone (``include_children=False``).
    rss_bytes: int
    #: The figure limits compare: USS when asked for, else ``rss_bytes``.
    memory_bytes: int
    memory_percent: float
    #: CPU averaged over ``cpu_window_s`` seconds (0 until two readings exist).
    cpu_percent: float
    #: How many seconds the CPU average actually covers (grows up to the window).
    cpu_window_s: float
    num_threads: int
    num_children: int
    root_rss_bytes: int
    uss_bytes: int | None = None
    #: pids of the descendants counted in this sample.
    children: tuple[int, ...] = ()


class ResourceSampler:
    """Samples the resources of ``pid`` and (by default) all its descendants.

    Not thread-safe: one thread samples (the manager's monitor thread, or the
    runner's watch loop). ``backend`` picks the reader ("auto": /proc on Linux,
    psutil elsewhere); ``clock`` is injectable for tests.
    """

    def __init__(
        self,
        pid: int | None = None,
        *,
        include_children: bool = True,
        use_uss: bool = False,
        cpu_window_s: float = DEFAULT_CPU_WINDOW_S,
        scan_interval_s: float = DEFAULT_SCAN_INTERVAL_S,
        backend: Literal["auto", "procfs", "psutil"] = "auto",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pid = os.getpid() if pid is None else pid
        self.include_children = include_children
        self.use_uss = use_uss
        self.cpu_window_s = max(0.0, cpu_window_s)
        self.scan_interval_s = max(0.0, scan_interval_s)
        self._next_scan = 0.0
        self._excluded: frozenset[int] = frozenset()
        self._dirty = False
        self._clock = clock
        if backend == "procfs" and not _LINUX:
            msg = "backend 'procfs' needs Linux /proc (use 'auto' or 'psutil')"
            raise ValueError(msg)
        self._linux = _LINUX if backend == "auto" else backend == "procfs"
        self._total_ram = (total_memory() if self._linux else _psutil().virtual_memory().total) or 1
        # Only the psutil backend reads through it; it raises NoSuchProcess for a bad pid.
        self._proc: psutil.Process | None = None if self._linux else _psutil().Process(self.pid)
        self._root_start: int | None = None
        if self._linux:
            st = read_stat(self.pid)
            if st is None:
                raise _psutil().NoSuchProcess(self.pid)
            self._root_start = st.start_ticks
        # pid -> (ppid, start ticks) of every process seen on the machine (Linux).
        self._parents: dict[int, tuple[int, int]] = {}
        self._pid_set: frozenset[int] = frozenset()
        self._descendants: tuple[int, ...] = ()
        # CPU accounting: cumulative CPU seconds of the tree, per-pid last readings.
        self._cpu_last: dict[int, float] = {}
        self._cpu_total = 0.0
        self._window: collections.deque[tuple[float, float]] = collections.deque()
        self._first = True

    # -- descendants ---------------------------------------------------------

    def _linux_descendants(self) -> tuple[int, ...]:
        now = self._clock()
        if now < self._next_scan:
            return self._descendants
        self._next_scan = now + self.scan_interval_s
        try:
            names = os.listdir(PROC_ROOT)
        except OSError:
            return ()
        pids = frozenset(int(n) for n in names if n.isdigit())
        if pids == self._pid_set and not self._dirty:
            return self._descendants
        self._dirty = False
        parents = self._parents
        for gone in self._pid_set - pids:
            parents.pop(gone, None)
        for pid in pids - self._pid_set:
            st = read_stat(pid)
            if st is not None:
                parents[pid] = (st.ppid, st.start_ticks)
        self._pid_set = pids
        children: dict[int, list[int]] = {}
        for pid, (ppid, _start) in parents.items():
            children.setdefault(ppid, []).append(pid)
        found: list[int] = []
        seen = {self.pid, *self._excluded}
        stack = [self.pid]
        while stack:
            for child in children.get(stack.pop(), ()):
                if child not in seen:
                    seen.add(child)
                    found.append(child)
                    stack.append(child)
        self._descendants = tuple(found)
        return self._descendants

    def set_excluded(self, pids: frozenset[int] | set[int]) -> None:
        """Leave these descendants (and theirs) out, e.g. procguard's own health responder."""
        pids = frozenset(pids)
        if pids != self._excluded:
            self._excluded = pids
            self._dirty = True
            self._next_scan = 0.0

    def descendants(self, *, rescan: bool = False) -> tuple[int, ...]:
        """pids of the descendants of the root (cheap on Linux; cached map).

        New descendants are found at most every ``scan_interval_s`` unless
        ``rescan`` asks for a fresh scan now.
        """
        if rescan:
            self._next_scan = 0.0
        if self._linux:
            return self._linux_descendants()
        ps = _psutil()
        assert self._proc is not None
        try:
            kids = self._proc.children(recursive=True)
        except ps.Error:
            return ()
        return tuple(p.pid for p in kids if p.pid not in self._excluded)

    # -- sampling ------------------------------------------------------------

    def _read_tree(self) -> tuple[list[tuple[int, float, int, int]], tuple[int, ...]]:
        """[(pid, cpu_s, rss, threads)] for the root first, then descendants."""
        rows: list[tuple[int, float, int, int]] = []
        kids = self.descendants() if self.include_children else ()
        if self._linux:
            root = read_stat(self.pid)
            if root is None or root.start_ticks != self._root_start:
                raise _psutil().NoSuchProcess(self.pid)
            rows.append((self.pid, root.cpu_seconds, root.rss_bytes, root.num_threads))
            for pid in kids:
                st = read_stat(pid)
                if st is None:
                    continue
                known = self._parents.get(pid)
                if known is not None and known[1] != st.start_ticks:
                    # pid reused by an unrelated process: forget it, re-learn next time.
                    self._parents.pop(pid, None)
                    self._pid_set = self._pid_set - {pid}
                    continue
                rows.append((pid, st.cpu_seconds, st.rss_bytes, st.num_threads))
            return rows, kids
        ps = _psutil()
        assert self._proc is not None
        procs = [self._proc]
        for pid in kids:
            try:
                procs.append(ps.Process(pid))
            except ps.Error:  # gone since the scan
                continue
        for i, proc in enumerate(procs):
            try:
                with proc.oneshot():
                    t = proc.cpu_times()
                    rows.append((proc.pid, t.user + t.system, proc.memory_info().rss, proc.num_threads()))
            except ps.Error:
                if i == 0:
                    raise
        return rows, kids

    def _uss(self, pids: list[int]) -> int:
        ps = _psutil()
        total = 0
        for pid in pids:
            try:
                total += ps.Process(pid).memory_full_info().uss
            except (ps.Error, AttributeError):
                continue
        return total

    def sample(self) -> ResourceSample:
        """Read the tree now. Raises ``psutil.NoSuchProcess`` once the root is gone."""
        rows, _kids = self._read_tree()
        now = self._clock()
        # CPU: add each process's progress since the last reading; a new pid
        # contributes all its CPU time (it started after the last reading).
        last = self._cpu_last
        fresh: dict[int, float] = {}
        delta = 0.0
        for pid, cpu_s, _rss, _thr in rows:
            fresh[pid] = cpu_s
            if not self._first:
                delta += max(0.0, cpu_s - last.get(pid, 0.0))
        self._cpu_last = fresh
        self._first = False
        self._cpu_total += delta
        window = self._window
        window.append((now, self._cpu_total))
        start = now - self.cpu_window_s
        while len(window) > 2 and window[1][0] <= start:
            window.popleft()
        t0, c0 = window[0]
        covered = now - t0
        cpu_percent = (self._cpu_total - c0) / covered * 100.0 if covered > 0 else 0.0
        rss = sum(r[2] for r in rows)
        uss = self._uss([r[0] for r in rows]) if self.use_uss else None
        memory = uss if uss is not None else rss
        return ResourceSample(
            pid=self.pid,
            taken_at=now,
            rss_bytes=rss,
            memory_bytes=memory,
            memory_percent=memory / self._total_ram * 100.0,
            cpu_percent=cpu_percent,
            cpu_window_s=covered,
            num_threads=rows[0][3],
            num_children=len(rows) - 1,
            root_rss_bytes=rows[0][2],
            uss_bytes=uss,
            children=tuple(r[0] for r in rows[1:]),
        )


def _psutil() -> ModuleType:
    """psutil, imported on first use (see the module's docstring)."""
    import psutil

    return psutil


