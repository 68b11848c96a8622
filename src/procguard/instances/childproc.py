"""Our children once they run: a pidfd handle, the tree below a pid, reaping adopted orphans.

Starting a child (:mod:`procguard.instances.spawn`) needs ``subprocess`` and
``ctypes``; watching it afterwards needs neither. The long-lived command
runner and the supervisor's tree sampler use only this module, so they stay
small: standard library ``os``, ``select`` and ``signal``, plus /proc.
"""

from __future__ import annotations

import os
import select
import signal
import time

from ..procstat import read_stat

TYPE_CHECKING = False
if TYPE_CHECKING:
    import subprocess
    from collections.abc import Collection

#: At most this many processes are read in one worker's tree (a fork bomb is not walked forever).
MAX_TREE = 10_000
#: How often a wait without a pidfd (old kernels) looks again.
_POLL_S = 0.01


class ChildHandle:
    """A race-free handle on one of *our* children, backed by a pidfd.

    A pidfd refers to one process for good, so signalling through it can
    never hit a recycled PID, and ``wait`` is a ``poll()`` with no sleep
    loop. Open it while the child cannot yet have been reaped: right after
    spawning, or in a process that inherited the child over an ``exec``
    (the command runner's watching stage), where no ``Popen`` exists and the
    handle reaps the child itself. With ``popen``, reaping is left to it, so
    ``subprocess`` never loses the exit status it waits for. Without pidfd
    support (old kernel) it falls back to polling ``waitpid``.
    """

    def __init__(self, pid: int, popen: subprocess.Popen[bytes] | None = None) -> None:
        self.pid = pid
        self.popen = popen
        self.returncode: int | None = None  # as Popen reports it: -N for death by signal N
        self._fd: int | None = None
        pidfd_open = getattr(os, "pidfd_open", None)
        if pidfd_open is not None and hasattr(signal, "pidfd_send_signal") and self._poll() is None:
            try:
                self._fd = int(pidfd_open(pid))
            except OSError:
                self._fd = None

    @classmethod
    def of(cls, popen: subprocess.Popen[bytes]) -> ChildHandle:
        """The handle of a child just started with ``subprocess``."""
        return cls(popen.pid, popen)

    @property
    def has_pidfd(self) -> bool:
        return self._fd is not None

    def fileno(self) -> int | None:
        """The pidfd (readable once the child exits), for the caller's own poll loop."""
        return self._fd

    def _poll(self) -> int | None:
        """Reap the child if it has exited (without blocking); its return code, or None while it runs."""
        if self.returncode is not None:
            return self.returncode
        if self.popen is not None:
            self.returncode = self.popen.poll()
            return self.returncode
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:  # reaped elsewhere: gone, status unknown
            self.returncode = -signal.SIGKILL
            return self.returncode
        if pid:
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def send_signal(self, sig: int) -> bool:
        """Send ``sig`` if the child has not exited; True when it was delivered."""
        if self._fd is not None:
            try:
                signal.pidfd_send_signal(self._fd, sig)
                return True
            except ProcessLookupError:
                return False
        if self._poll() is not None:
            return False
        try:  # not reaped yet, so the pid is still ours
            os.kill(self.pid, sig)
            return True
        except ProcessLookupError:
            return False

    def terminate(self) -> bool:
        return self.send_signal(signal.SIGTERM)

    def kill(self) -> bool:
        return self.send_signal(signal.SIGKILL)

    def signal_group(self, sig: int) -> bool:
        """Send ``sig`` to the child's process group (it leads one when spawned with a new session).

        Only while the child is alive: a dead leader's PGID could be recycled.
        """
        if not self.is_alive():
            return False
        try:
            os.killpg(self.pid, sig)
            return True
        except (ProcessLookupError, PermissionError):
            return False

    def is_alive(self) -> bool:
        """False once the child has exited (its status is left for ``wait``)."""
        if self._fd is not None:
            poller = select.poll()
            poller.register(self._fd, select.POLLIN)
            return not poller.poll(0)
        return self._poll() is None

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for exit and reap; the return code, or None on timeout."""
        if self.returncode is not None:
            return self.returncode
        if self._fd is not None and timeout is not None:
            poller = select.poll()
            poller.register(self._fd, select.POLLIN)
            if not poller.poll(max(0.0, timeout) * 1000):
                return None
            timeout = None  # exited: the reap below does not block
        if self.popen is not None:
            import subprocess

            try:
                self.returncode = self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                return None
            return self.returncode
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._poll() is None:
            if self._fd is not None or deadline is None:
                try:
                    _, status = os.waitpid(self.pid, 0)
                except ChildProcessError:
                    self.returncode = -signal.SIGKILL
                else:
                    self.returncode = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() >= deadline:
                return None
            time.sleep(_POLL_S)
        return self.returncode

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> ChildHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def reap_children(exclude: Collection[int] = ()) -> list[tuple[int, int]]:
    """Reap exited children (zombies) except ``exclude``; return ``[(pid, wait status)]``.

    A subreaper inherits orphans it never started; their zombies must be
    collected or they pile up. ``waitpid(-1)`` would also steal the exit
    status of children a ``subprocess.Popen`` is still going to ``wait()``
    for, so pass those PIDs in ``exclude`` -- only zombies of other
    children are reaped, one PID at a time.
    """
    reaped: list[tuple[int, int]] = []
    skip = set(exclude)
    for pid in direct_children(os.getpid()):
        if pid in skip or not _is_zombie(pid):
            continue
        try:
            got, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            continue
        if got:
            reaped.append((got, status))
    return reaped


_HAS_CHILDREN_FILE = os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children")


def direct_children(pid: int) -> list[int]:
    """PIDs of the direct children of ``pid`` ([] if it is gone).

    Read from the kernel's ``/proc/PID/task/TID/children`` lists (a few
    small files) rather than by scanning every process on the machine, which
    is what finding children costs otherwise; psutil is the fallback where
    the kernel does not offer that file (no CONFIG_PROC_CHILDREN).
    """
    if not _HAS_CHILDREN_FILE:
        import psutil  # here, not at the top: the supervisor spawns without it (1.2 MB RSS)

        try:
            return [child.pid for child in psutil.Process(pid).children()]
        except psutil.Error:
            return []
    found: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as handle:
                found.extend(int(part) for part in handle.read().split())
        except (OSError, ValueError):
            continue
    return found


def _is_zombie(pid: int) -> bool:
    """True when ``pid`` has exited and waits to be reaped (or is already gone)."""
    stat = read_stat(pid)
    return stat is None or stat.exited


def tree_pids(root: int, excluded: Collection[int] = ()) -> list[int]:
    """``root`` and all its live descendants (root first; empty if root is gone).

    A pid in ``excluded`` is left out together with its own descendants. Shared by the
    supervisor's tree sampler and the command runner's.
    """
    if not os.path.exists(f"/proc/{root}"):
        return []
    pids = [root]
    index = 0
    while index < len(pids) and len(pids) < MAX_TREE:
        pids.extend(child for child in direct_children(pids[index]) if child not in excluded)
        index += 1
    return pids
