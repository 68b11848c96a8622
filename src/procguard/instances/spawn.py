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

Once started, a child is watched with :mod:`.childproc` (pidfd handle, its
tree, reaping), which needs neither ``subprocess`` nor ``ctypes``.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import IO, Any

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
