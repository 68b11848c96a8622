"""The supervisor's orphan guard: the shared /bin/sh watchdog, fed the workers' process groups.

Each worker leads its own process group; the supervisor tells the watchdog
(:mod:`procguard.instances.watchdog`, the same script a standalone
``procguard run`` uses) every group it creates and every group that is
gone. If the supervisor dies however it dies, the watchdog stops the
groups still listed and every process still carrying a marker of this
supervisor's run (the pattern of
:func:`procguard.instances.marker.run_pattern`, given at its start: a
grandchild that left its worker's group with ``setsid`` kept the marker),
SIGKILLing after :data:`KILL_AFTER_S`. A normal shutdown has emptied the
list first.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import subprocess

from ..instances.watchdog import KILL_AFTER_S, NAME, SCRIPT, watchdog_argv, watchdog_env

__all__ = ["KILL_AFTER_S", "NAME", "SCRIPT", "WatchdogLink", "start_watchdog", "watchdog_argv"]

logger = logging.getLogger(__name__)


def start_watchdog(shell: str = "/bin/sh", pattern: str = "") -> subprocess.Popen[bytes]:
    """Start the watchdog in its own session; write ``+PGID``/``-PGID`` lines to its stdin.

    ``pattern`` (:func:`procguard.instances.marker.run_pattern`): the markers of
    what to stop at the end whatever group it is in; empty: groups only.
    It never carries a marker itself (one the supervisor inherited would
    make it a target of whoever stops that instance).
    """
    return subprocess.Popen(
        watchdog_argv(shell, pattern),
        env=watchdog_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )


class WatchdogLink:
    """The supervisor's side of the watchdog: start it, tell it groups, notice if it dies.

    Every method is a no-op when the watchdog is disabled or could not start:
    the parent-death signal still covers the workers themselves.
    """

    def __init__(self, *, enabled: bool = True, shell: str = "/bin/sh", pattern: str = "") -> None:
        self._enabled = enabled
        self._shell = shell
        self._pattern = pattern
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if not self._enabled:
            return
        try:
            self._proc = start_watchdog(self._shell, self._pattern)
        except OSError as error:
            logger.warning("cannot start the orphan watchdog: %s", error)
            self._proc = None

    def watch(self, pgid: int) -> None:
        """A new process group to kill if the supervisor dies."""
        self._tell(b"+%d\n" % pgid)

    def unwatch(self, pgid: int) -> None:
        """A group that is gone: forget it (its number may be reused)."""
        self._tell(b"-%d\n" % pgid)

    def _tell(self, line: bytes) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None:
            return
        try:
            proc.stdin.write(line)
            proc.stdin.flush()
        except OSError as error:
            if error.errno != errno.EPIPE:
                logger.warning("watchdog: %s", error)

    def reaped(self, pid: int, wait_status: int) -> bool:
        """True if ``pid`` (reaped by the caller's ``waitpid(-1)``) was the watchdog."""
        proc = self._proc
        if proc is None or pid != proc.pid:
            return False
        proc.returncode = os.waitstatus_to_exitcode(wait_status)
        logger.warning("watchdog (pid %s) exited; orphan protection relies on parent-death signals", pid)
        self._proc = None
        return True

    def close(self) -> None:
        """Normal shutdown: EOF with an empty list; it stops what still carries this run's markers
        (a grandchild that escaped its group), then exits; wait for it briefly."""
        proc, self._proc = self._proc, None
        if proc is None or proc.stdin is None:
            return
        with contextlib.suppress(OSError):
            proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=2)
