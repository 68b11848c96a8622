"""One reader of ``/proc/PID/stat``: the line parsed once into a typed value.

Every part of procguard that looks at another process on Linux needs a few
fields of that line: the sampler and the supervisor's tree scan (CPU times,
resident pages, threads, parent), the identity checks (start time in clock
ticks, which a wall-clock step cannot move), the runner's tree and the subreaper
(has it exited?). They all read it here, so the parsing rule -- the command
name sits in parentheses and may itself contain spaces or ``)``, so fields
are counted after the *last* ``)`` -- is written once.

Standard library only, and nothing heavy: the runner and the supervisor
import this module, and both are measured against small RSS budgets.
"""

from __future__ import annotations

import os
from typing import NamedTuple

#: Clock ticks per second: the unit of the CPU times and the start time.
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
#: Bytes per page: the unit of the resident set size.
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

PROC_ROOT = "/proc"


class ProcStat(NamedTuple):
    """The fields procguard uses from one ``/proc/PID/stat`` line (see proc(5))."""

    #: One letter: R running, S sleeping, D disk sleep, Z zombie, X dead, T stopped, ...
    state: str
    ppid: int
    utime_ticks: int
    stime_ticks: int
    num_threads: int
    #: When the process started, in clock ticks since boot.
    start_ticks: int
    rss_pages: int

    @property
    def cpu_ticks(self) -> int:
        """User plus system CPU time, in clock ticks."""
        return self.utime_ticks + self.stime_ticks

    @property
    def cpu_seconds(self) -> float:
        return self.cpu_ticks / CLOCK_TICKS

    @property
    def rss_bytes(self) -> int:
        return self.rss_pages * PAGE_SIZE

    @property
    def exited(self) -> bool:
        """True for a zombie (exited, not yet reaped) or a process being torn down."""
        return self.state in ("Z", "X")


def parse_stat(data: bytes) -> ProcStat | None:
    """Parse the content of a ``/proc/PID/stat`` file; None when it is not one."""
    end = data.rfind(b")")
    if end < 0:
        return None
    fields = data[end + 2 :].split(None, 22)  # up to rss (index 21): the rest is never read
    try:
        return ProcStat(
            state=fields[0].decode("ascii", "replace"),
            ppid=int(fields[1]),
            utime_ticks=int(fields[11]),
            stime_ticks=int(fields[12]),
            num_threads=int(fields[17]),
            start_ticks=int(fields[19]),
            rss_pages=int(fields[21]),
        )
    except (IndexError, ValueError):
        return None


def read_proc(pid: int, name: str, *, proc_root: str = PROC_ROOT) -> bytes | None:
    """The bytes of ``/proc/PID/NAME``; None when the process is gone or the file unreadable to us."""
    try:
        with open(f"{proc_root}/{pid}/{name}", "rb") as handle:
            return handle.read()
    except OSError:
        return None


def read_stat(pid: int, *, proc_root: str = PROC_ROOT) -> ProcStat | None:
    """The stat line of ``pid``, parsed; None when the process is gone or unreadable."""
    data = read_proc(pid, "stat", proc_root=proc_root)
    return None if data is None else parse_stat(data)


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot; None when it is gone."""
    stat = read_stat(pid)
    return None if stat is None else stat.start_ticks


def total_memory() -> int:
    """Total RAM in bytes from /proc/meminfo (psutil's ``virtual_memory().total``); 0 when unknown."""
    try:
        with open(f"{PROC_ROOT}/meminfo", "rb") as handle:
            for line in handle:
                if line.startswith(b"MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0
