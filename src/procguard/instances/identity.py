"""Who is ours: processes carrying a marker, and (pid, start time) identities.

Every process procguard starts gets ``PROCGUARD_INSTANCE=<name>:<id>`` in its
environment (the format is :mod:`.marker`'s), and inherits it to all its
descendants, including the double-forked, ``setsid``-ed escapee that left
the process tree long ago. The kernel keeps a process's initial environment
readable in ``/proc/PID/environ`` (for the same user), so ``procguard
cleanup`` can find every leftover of an instance without matching command
lines.

A PID alone never identifies a process: it is recycled. A
:class:`ProcessIdentity` adds the start time (in clock ticks since boot,
immune to wall-clock steps, plus psutil's ``create_time``) and the boot id,
and answers only "is this still the same process?".

psutil is imported inside the functions that use it: it costs about 1.2 MB
of RSS in a process that never looks at other processes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..procstat import CLOCK_TICKS, start_ticks
from .marker import parse_marker, read_marker, validate_name

if TYPE_CHECKING:
    import psutil

log = logging.getLogger(__name__)

#: create_time values are floats derived from clock ticks; two different
#: processes with the same PID cannot start within this tolerance.
CREATE_TIME_TOLERANCE_S = 0.001


def boot_id() -> str | None:
    """The kernel's boot id (a record from before a reboot never matches a live process)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip() or None
    except OSError:
        return None


def create_time(pid: int) -> float | None:
    """Start time of ``pid`` in seconds since the epoch, the way psutil computes it on Linux.

    Start ticks over ``SC_CLK_TCK`` plus the boot time (``btime`` in
    /proc/stat), the same arithmetic as ``psutil.Process.create_time()``, so
    a record written with it matches one written with psutil; the supervisor
    records its own lock this way without loading psutil. None without /proc.
    """
    ticks = start_ticks(pid)
    if ticks is None:
        return None
    try:
        with open("/proc/stat", "rb") as f:
            for line in f:
                if line.startswith(b"btime"):
                    return float(ticks) / CLOCK_TICKS + float(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


@dataclass(frozen=True)
class ProcessIdentity:
    """A process as (pid, start time): still the same process, or not.

    ``start_ticks`` (from /proc) is compared when known because it does not
    move when the wall clock is stepped; ``create_time`` (psutil, seconds
    since the epoch) is the portable fallback.
    """

    pid: int
    create_time: float
    start_ticks: int | None = None

    @classmethod
    def of(cls, process: int | psutil.Process) -> ProcessIdentity:
        """The identity of a running process (raises psutil.NoSuchProcess if gone)."""
        import psutil

        proc = process if isinstance(process, psutil.Process) else psutil.Process(process)
        return cls(proc.pid, float(proc.create_time()), start_ticks(proc.pid))

    @classmethod
    def from_json(cls, data: Any) -> ProcessIdentity | None:
        """Parse ``{"pid", "create_time", "start_ticks"}``; None when missing or implausible."""
        if not isinstance(data, dict):
            return None
        pid, created, ticks = data.get("pid"), data.get("create_time"), data.get("start_ticks")
        if isinstance(pid, bool) or not isinstance(pid, int) or not 1 < pid < 2**22:
            return None
        if isinstance(created, bool) or not isinstance(created, (int, float)) or created <= 0:
            return None
        if ticks is not None and (isinstance(ticks, bool) or not isinstance(ticks, int) or ticks < 0):
            return None
        return cls(pid, float(created), ticks)

    def to_json(self) -> dict[str, Any]:
        return {"pid": self.pid, "create_time": self.create_time, "start_ticks": self.start_ticks}

    def matches(self) -> bool:
        """True when ``pid`` is alive and is still the process this identity names."""
        return self.process() is not None

    def process(self) -> psutil.Process | None:
        """A ``psutil.Process`` for this identity, or None if gone or recycled.

        The returned object captured its own start time at construction and
        psutil re-checks it before every signal, so it stays safe to use.
        """
        if self.pid <= 1:
            return None
        import psutil

        try:
            proc = psutil.Process(self.pid)
            created = float(proc.create_time())
        except psutil.Error:
            return None
        if self.start_ticks is not None:
            ticks = start_ticks(self.pid)
            if ticks is not None:
                return proc if ticks == self.start_ticks else None
        return proc if abs(created - self.create_time) < CREATE_TIME_TOLERANCE_S else None


def same_user(proc: psutil.Process) -> bool:
    """True when ``proc`` runs entirely as our user (real and effective uid)."""
    import psutil

    try:
        uids = proc.uids()
    except psutil.Error:
        return False
    me = os.getuid()
    return bool(uids.real == me and uids.effective == me)


def _all_pids() -> Iterable[int]:
    import psutil

    try:
        return psutil.pids()
    except psutil.Error:  # pragma: no cover - /proc unreadable
        return []


def find_marked(
    name: str | None, *, marker: str | None = None, namespace: str | None = None
) -> list[psutil.Process]:
    """Processes of our user carrying a procguard marker.

    ``name`` selects markers of that instance name (any id); ``None`` selects
    every procguard-marked process; ``namespace`` keeps only markers of that
    state directory (:func:`procguard.instances.statedir.namespace_of`);
    ``marker`` (exact ``"<name>:<id>"``) narrows to one start. Each result was
    alive with that marker when checked; its ``psutil.Process`` guards later
    signals against PID reuse. The caller's own process is included if it is
    marked: callers decide what to spare (see
    :func:`procguard.proctree.protected_pids`).
    """
    import psutil

    if name is not None:
        validate_name(name)
    found: list[psutil.Process] = []
    for pid in _all_pids():
        if pid <= 1:
            continue
        try:
            proc = psutil.Process(pid)  # captures the start time first
        except psutil.Error:
            continue
        value = read_marker(pid)
        if value is None or not _selected(value, name, marker, namespace):
            continue
        try:
            if not proc.is_running() or not same_user(proc):
                continue
        except psutil.Error:
            continue
        found.append(proc)
    return found


def _selected(value: str, name: str | None, marker: str | None, namespace: str | None) -> bool:
    if marker is not None:
        return value == marker
    parsed = parse_marker(value)
    if parsed is None:
        return False
    if namespace is not None and parsed.namespace != namespace:
        return False
    return name is None or parsed.name == name
