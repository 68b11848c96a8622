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
:data:`KILL_AFTER_S` for them to go, SIGKILLs what is left. A normal
shutdown has emptied the list first.

Along with those groups, however the supervisor ended, it stops every
process still carrying a marker that supervisor gave out (the pattern of
:func:`procguard.instances.marker.run_pattern`, passed at its start): a
grandchild that left its worker's process group with ``setsid`` is in no
group the list names, but it kept the marker in its environment. A second
look afterwards catches what was forked meanwhile. The pattern names one
run of one supervisor (a random run id is part of every marker it gives
out), so a stack started again at once is never touched.

It is a POSIX shell script (``/bin/sh``, its builtins and one ``grep`` at the
end, in its own session so a terminal's Ctrl-C does not reach it): about
1 MB of RSS where a Python interpreter would add 9 MB beside a supervisor
whose whole budget is supervisord's 25 MB. It ignores everything that is
not ``+N``/``-N`` with N > 1, so it can never be told to signal init or
every process.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import subprocess

from ..instances.marker import MARKER_ENV

logger = logging.getLogger(__name__)

#: How long the groups get between SIGTERM and SIGKILL after the supervisor died.
KILL_AFTER_S = 1.0

#: ``sh -c SCRIPT procguard-watchdog PATTERN``; groups are kept as " 12 34 " in one variable.
SCRIPT = """\
trap '' INT HUP
pattern=$1
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
stop() {
  [ $# -eq 0 ] && return 0
  for t; do kill -15 "$t" 2>/dev/null; done
  i=0
  while [ $i -lt STEPS ]; do
    left=""
    for t; do kill -0 "$t" 2>/dev/null && left="$left $t"; done
    [ -z "$left" ] && return 0
    sleep 0.05
    i=$((i + 1))
  done
  for t; do kill -9 "$t" 2>/dev/null; done
}
marked() {
  [ -n "$pattern" ] || return 0
  for f in $(grep -l -a -z -e "$pattern" /proc/[0-9]*/environ 2>/dev/null); do
    p=${f#/proc/}
    p=${p%/environ}
    case "$p" in ''|*[!0-9]*) continue ;; esac
    [ "$p" -gt 1 ] && [ "$p" -ne $$ ] && printf ' %s' "$p"
  done
}
targets=$(marked)
for pg in $groups; do targets="$targets -$pg"; done
stop $targets
stop $(marked)
exit 0
""".replace("STEPS", str(int(KILL_AFTER_S / 0.05)))

#: ``argv[0]`` of the watchdog as ``ps`` shows it.
NAME = "procguard-watchdog"


def watchdog_argv(shell: str = "/bin/sh", pattern: str = "") -> list[str]:
    return [shell, "-c", SCRIPT, NAME, pattern]


def start_watchdog(shell: str = "/bin/sh", pattern: str = "") -> subprocess.Popen[bytes]:
    """Start the watchdog in its own session; write ``+PGID``/``-PGID`` lines to its stdin.

    ``pattern`` (:func:`procguard.instances.marker.run_pattern`): the markers of
    what to stop at the end whatever group it is in; empty: groups only.
    It never carries a marker itself (one the supervisor inherited would
    make it a target of whoever stops that instance).
    """
    return subprocess.Popen(
        watchdog_argv(shell, pattern),
        env={key: value for key, value in os.environ.items() if key != MARKER_ENV},
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
