"""The orphan guard: a tiny process that kills the workers if the supervisor dies.

Why it exists: a parent-death signal reaches only the supervisor's direct
children, and a worker that dies by it leaves its own children
(``multiprocessing`` workers, ``daemon=True`` or not) running: measured,
every peer leaves the worker *and* 4 of 4 grandchildren alive when it is
SIGKILLed. Each worker leads its own process group; the
supervisor tells this watchdog every group it creates (``+PGID``) and
every group that is gone (``-PGID``), one per line, over a pipe. When that
pipe reaches end-of-file -- the supervisor exited, however it died -- the
watchdog sends SIGTERM to every group still listed, waits up to
:data:`KILL_AFTER_S` for them to go, SIGKILLs what is left, and exits. A
normal shutdown has emptied the list first, so then it does nothing.

It is a POSIX shell script (``/bin/sh``, its builtins only, in its own
session so a terminal's Ctrl-C does not reach it): about 1 MB of RSS where
a Python interpreter would add 9 MB beside a supervisor whose whole budget
is supervisord's 25 MB. It ignores everything that is not ``+N``/``-N``
with N > 1, so it can never be told to signal init or every process.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import subprocess

logger = logging.getLogger(__name__)

#: How long the groups get between SIGTERM and SIGKILL after the supervisor died.
KILL_AFTER_S = 1.0

#: ``sh -c SCRIPT procguard-watchdog``; groups are kept as " 12 34 " in one variable.
SCRIPT = """\
trap '' INT HUP
groups=" "
while IFS= read -r line; do
  pg=${line#?}
  case "$pg" in ''|*[!0-9]*) continue ;; esac
  [ "$pg" -gt 1 ] || continue
  case "$line" in
    +*) case "$groups" in *" $pg "*) ;; *) groups="$groups$pg " ;; esac ;;
    -*) case "$groups" in *" $pg "*) groups="${groups%%" $pg "*} ${groups#*" $pg "}" ;; esac ;;
  esac
done
set -- $groups
[ $# -eq 0 ] && exit 0
for pg; do kill -15 "-$pg" 2>/dev/null; done
i=0
while [ $i -lt STEPS ]; do
  left=""
  for pg; do kill -0 "-$pg" 2>/dev/null && left="$left $pg"; done
  [ -z "$left" ] && exit 0
  sleep 0.05
  i=$((i + 1))
done
for pg; do kill -9 "-$pg" 2>/dev/null; done
exit 0
""".replace("STEPS", str(int(KILL_AFTER_S / 0.05)))

#: ``argv[0]`` of the watchdog as ``ps`` shows it.
NAME = "procguard-watchdog"


def watchdog_argv(shell: str = "/bin/sh") -> list[str]:
    return [shell, "-c", SCRIPT, NAME]


def start_watchdog(shell: str = "/bin/sh") -> subprocess.Popen[bytes]:
    """Start the watchdog in its own session; write ``+PGID``/``-PGID`` lines to its stdin."""
    return subprocess.Popen(
        watchdog_argv(shell),
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

    def __init__(self, *, enabled: bool = True, shell: str = "/bin/sh") -> None:
        self._enabled = enabled
        self._shell = shell
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if not self._enabled:
            return
        try:
            self._proc = start_watchdog(self._shell)
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
        """Normal shutdown: EOF with an empty list, so it exits quietly; wait for it briefly."""
        proc, self._proc = self._proc, None
        if proc is None or proc.stdin is None:
            return
        with contextlib.suppress(OSError):
            proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=2)
