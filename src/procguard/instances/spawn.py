"""Starting children so that none can become an orphan.

Three kernel mechanisms, used together, so that no child outlives procguard:

- **Parent-death signal** (``PR_SET_PDEATHSIG``): set in the child between
  fork and exec, so the child gets SIGTERM the moment its parent dies, even
  by SIGKILL. The "parent already gone before prctl" race is closed by
  comparing ``getppid()`` with the parent's PID captured before the fork.
  Caveat (kernel semantics): the signal fires when the *thread* that forked
  the child exits, so spawn from a long-lived thread (the main thread).
- **Own session / process group** (``setsid``): a worker and everything it
  forks can be signalled as a group, and a terminal's Ctrl-C reaches the
  supervisor only, which then stops workers gracefully.
- **Child subreaper** (``PR_SET_CHILD_SUBREAPER``): grandchildren orphaned by
  a dying worker are re-parented to the runner/supervisor instead of init,
  so it can see, stop and reap them.

Plus the identity marker in the environment (:mod:`.identity`), inherited by
every descendant, which finds whatever still escapes (a double-forked
daemon in its own session).
"""

from __future__ import annotations

import ctypes
import logging
import os
import select
import signal
import subprocess
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import IO, Any

from ..procstat import read_stat
from .marker import MARKER_ENV

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36

_File = int | IO[Any] | None


def _load_prctl() -> Callable[..., int] | None:
    """prctl from the symbols already loaded into this process (libc among them).

    ``CDLL(None)`` is ``dlopen(NULL)``: no ``ctypes.util.find_library("c")``,
    which runs ``ldconfig -p`` in a subprocess and imports tempfile, random and
    shutil into a supervisor that needs none of them.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    prctl.restype = ctypes.c_int
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    return prctl


_PRCTL: Callable[..., int] | None = None
_PRCTL_LOADED = False


def _prctl() -> Callable[..., int] | None:
    """libc's prctl, loaded once in the parent (never first loaded in a fork child)."""
    global _PRCTL, _PRCTL_LOADED
    if not _PRCTL_LOADED:
        _PRCTL = _load_prctl()
        _PRCTL_LOADED = True
    return _PRCTL


def parent_death_signal_preexec(sig: int, parent_pid: int | None = None) -> Callable[[], None]:
    """A ``preexec_fn`` that sets the parent-death signal ``sig`` in the child.

    If the parent died between fork and prctl, the child would never get the
    signal (it already has a new parent), so it compares ``getppid()`` with
    ``parent_pid`` (captured here, in the parent) and signals itself.
    """
    prctl = _prctl()
    expected = os.getpid() if parent_pid is None else parent_pid

    def _preexec() -> None:
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != expected:
            os.kill(os.getpid(), sig)

    return _preexec


def marked_environment(marker: str, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: ours) with ``PROCGUARD_INSTANCE=marker`` set."""
    result = dict(os.environ if env is None else env)
    result[MARKER_ENV] = marker
    return result


def spawn_process(
    argv: Sequence[str],
    *,
    marker: str,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    stdin: _File = subprocess.DEVNULL,
    stdout: _File = None,
    stderr: _File = None,
    new_session: bool = True,
    parent_death_signal: int | None = signal.SIGTERM,
    pass_fds: Collection[int] = (),
    **popen_kwargs: Any,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` as a procguard-managed child and return its ``Popen``.

    The child gets the marker in its environment (``env`` defaults to ours),
    its own session (``new_session``), the parent-death signal (``None`` to
    skip), and no inherited fds besides 0-2 and ``pass_fds``. Call from a
    long-lived thread: the kernel sends the parent-death signal when the
    spawning *thread* exits.
    """
    if not argv:
        msg = "argv must not be empty"
        raise ValueError(msg)
    preexec = None
    if parent_death_signal is not None:
        preexec = parent_death_signal_preexec(int(parent_death_signal))
    proc = subprocess.Popen(
        list(argv),
        env=marked_environment(marker, env),
        cwd=cwd,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        start_new_session=new_session,
        # The preexec only calls prctl/getppid/kill (no Python locks, no
        # allocation-heavy work), which is what makes it safe beside threads.
        preexec_fn=preexec,  # noqa: PLW1509
        close_fds=True,
        pass_fds=tuple(pass_fds),
        **popen_kwargs,
    )
    log.debug("spawned pid %s (%s) marker %s", proc.pid, argv[0], marker)
    return proc


def become_child_subreaper() -> bool:
    """Make this process adopt orphaned descendants (Linux 3.4+). True on success."""
    prctl = _prctl()
    if prctl is None:
        return False
    if prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        log.debug("PR_SET_CHILD_SUBREAPER failed: errno %s", ctypes.get_errno())
        return False
    return True


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


class ChildHandle:
    """A race-free handle on one of *our* children, backed by a pidfd.

    A pidfd refers to one process for good, so signalling through it can
    never hit a recycled PID, and ``wait`` is a ``poll()`` with no sleep
    loop. The pidfd is opened right after spawning, while the child cannot
    yet have been reaped. Without pidfd support (old kernel, non-Linux) it
    falls back to ``Popen``'s own checks.
    """

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.popen = proc
        self.pid = proc.pid
        self._fd: int | None = None
        pidfd_open = getattr(os, "pidfd_open", None)
        if pidfd_open is not None and hasattr(signal, "pidfd_send_signal") and proc.returncode is None:
            try:
                self._fd = int(pidfd_open(proc.pid))
            except OSError:
                self._fd = None

    @property
    def has_pidfd(self) -> bool:
        return self._fd is not None

    def fileno(self) -> int | None:
        """The pidfd (readable once the child exits), for the caller's own poll loop."""
        return self._fd

    def send_signal(self, sig: int) -> bool:
        """Send ``sig`` if the child has not exited; True when it was delivered."""
        if self._fd is not None:
            try:
                signal.pidfd_send_signal(self._fd, sig)
                return True
            except ProcessLookupError:
                return False
        if self.popen.poll() is not None:
            return False
        try:
            self.popen.send_signal(sig)
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
        return self.popen.poll() is None

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for exit and reap; the return code, or None on timeout."""
        if self._fd is not None and timeout is not None:
            poller = select.poll()
            poller.register(self._fd, select.POLLIN)
            if not poller.poll(max(0.0, timeout) * 1000):
                return None
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

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


#: At most this many processes are read in one worker's tree (a fork bomb is not walked forever).
MAX_TREE = 10_000


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
