"""Cheap memory and CPU readings of a worker's process tree, read from /proc.

Why not :class:`procguard.sampler.ResourceSampler` or psutil's
``children(recursive=True)``: both find descendants by listing every
process on the machine (``/proc``), once per sampler per tick. A supervisor
sampling 50 workers every couple of seconds would do that 50 times per
tick. Here a tree is walked through the kernel's own
``/proc/PID/task/TID/children`` lists, so the cost is proportional to the
worker's own processes (a few small reads per worker per tick). Where that
file does not exist (kernels without CONFIG_PROC_CHILDREN) the walk falls
back to psutil. Limit *decisions* are still :mod:`procguard.policy`'s.
"""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..instances.spawn import direct_children
from ..procstat import CLOCK_TICKS, read_stat


def tree_pids(root: int, excluded: frozenset[int] = frozenset()) -> list[int]:
    """``root`` and all its live descendants (root first; empty if root is gone).

    A pid in ``excluded`` is left out together with its own descendants.
    """
    if not os.path.exists(f"/proc/{root}"):
        return []
    pids = [root]
    index = 0
    while index < len(pids) and len(pids) < 10_000:
        pids.extend(child for child in direct_children(pids[index]) if child not in excluded)
        index += 1
    return pids


@dataclass(frozen=True)
class TreeSample:
    """One reading of a process tree: RSS summed, CPU in percent of one core.

    ``cpu_percent`` is the average since the previous sample (for charts);
    ``window_cpu_percent`` the average over the last ``cpu_window_s`` seconds
    (what a CPU limit is judged on, never a single reading); ``cpu_seconds``
    the CPU time of the processes in the tree now.
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

    def set_excluded(self, pids: frozenset[int] | set[int]) -> None:
        """Leave these descendants (and theirs) out of the figures, e.g. procguard's own helpers.

        The same meaning as :meth:`procguard.sampler.ResourceSampler.set_excluded`:
        a worker's memory and CPU are its own tree's, never those of the runner's
        guardian or health responder. The root itself is always counted.
        """
        self._excluded = frozenset(pids) - {self.root_pid}

    def sample(self) -> TreeSample | None:
        """A fresh reading, or None when the root process is gone."""
        ticks = memory = count = 0
        for pid in tree_pids(self.root_pid, self._excluded):
            stat = read_stat(pid)
            if stat is None:
                continue
            ticks += stat.cpu_ticks
            memory += stat.rss_bytes
            count += 1
        if count == 0:
            return None
        now = self._clock()
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


def _percent(since: tuple[float, int] | None, now: float, ticks: int) -> float:
    if since is None or now <= since[0]:
        return 0.0
    return max(0.0, (ticks - since[1]) / CLOCK_TICKS / (now - since[0]) * 100.0)
