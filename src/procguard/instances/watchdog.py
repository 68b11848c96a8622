"""The orphan watchdog: a /bin/sh script that stops what is left when its owner dies.

Why it exists: a parent-death signal reaches only direct children, and a
child that dies by it leaves its own children (``multiprocessing`` workers,
``daemon=True`` or not) running: measured, supervisord, circus and PM2
leave the worker *and* 4 of 4 grandchildren alive when they are SIGKILLed.
Its owner -- the ``procguard up`` supervisor, or a standalone
``procguard run`` -- holds the write end of a pipe that is the watchdog's
standard input, and tells it every process group it creates (``+PGID``)
and every group that is gone (``-PGID``), one per line. When that pipe
reaches end-of-file -- the owner exited, however it died, SIGKILL and the
OOM killer included -- the watchdog sends SIGTERM to every group still
listed and to every process still carrying a marker that matches its
pattern (a grandchild that left its group with ``setsid`` kept the marker in
its environment), waits up to its grace for them to go, SIGKILLs what is
left (a zombie, exited and waiting to be reaped by whoever adopted it,
counts as gone), then looks once more for anything forked meanwhile. After a clean
shutdown the list is empty and nothing carries the marker any more, so it
just exits.

The pattern is a grep basic regex matched against each NUL-separated
environment entry: one run of one supervisor
(:func:`procguard.instances.marker.run_pattern`) or one start of one
instance (:func:`procguard.instances.marker.exact_pattern`). Either way a
stack or instance started again at once carries other markers and is
never touched.

It is a POSIX shell script (``/bin/sh``, its builtins, ``sleep`` and one
``grep`` at the end), in its own session so a terminal's Ctrl-C does not
reach it, with SIGINT and SIGHUP ignored: about 1.5 MB of RSS where a Python
interpreter holds 9 MB or more. It ignores every line that is not
``+N``/``-N`` with N > 1, so it can never be told to signal init or every
process. SIGTERM stands it down without doing anything.

Standard library only and no ``subprocess``: a standalone runner starts it
with :func:`start_watchdog` and stays small.
"""

from __future__ import annotations

import os

from .marker import MARKER_ENV

#: Default time between SIGTERM and SIGKILL once the owner is gone.
KILL_AFTER_S = 1.0
#: How often the watchdog checks whether what it signalled is gone.
_STEP_S = 0.05

#: ``sh -c SCRIPT procguard-watchdog PATTERN STEPS``; groups are kept as " 12 34 " in one variable.
SCRIPT = """\
trap '' INT HUP
pattern=$1
steps=${2:-20}
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
gone() {
  kill -0 "$1" 2>/dev/null || return 0
  case "$1" in
    -*) g=${1#-}
        for s in /proc/[0-9]*/stat; do
          { read -r l < "$s"; } 2>/dev/null || continue
          set -- ${l##*) }
          [ "$1" != Z ] && [ "$3" = "$g" ] && return 1
        done
        return 0 ;;
  esac
  { read -r l < "/proc/$1/stat"; } 2>/dev/null || return 0
  case "${l##*) }" in Z*|X*) return 0 ;; esac
  return 1
}
stop() {
  [ $# -eq 0 ] && return 0
  for t; do kill -15 "$t" 2>/dev/null; done
  i=0
  while [ $i -lt "$steps" ]; do
    left=""
    for t; do gone "$t" || left="$left $t"; done
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
"""

#: ``argv[0]`` of the watchdog as ``ps`` shows it.
NAME = "procguard-watchdog"


def watchdog_argv(shell: str = "/bin/sh", pattern: str = "", kill_after_s: float = KILL_AFTER_S) -> list[str]:
    """The watchdog's command line: stop what matches ``pattern`` (empty: groups only), SIGKILL after
    ``kill_after_s``."""
    steps = max(1, round(kill_after_s / _STEP_S))
    return [shell, "-c", SCRIPT, NAME, pattern, str(steps)]


def watchdog_env() -> dict[str, str]:
    """Our environment without a marker: a watchdog carrying one would be a target of whoever stops
    that instance (and of its own sweep)."""
    return {key: value for key, value in os.environ.items() if key != MARKER_ENV}


def start_watchdog(
    pattern: str, *, kill_after_s: float = KILL_AFTER_S, shell: str = "/bin/sh"
) -> tuple[int, int]:
    """Start the watchdog in its own session; return ``(pid, fd)``, ``fd`` the write end of its input.

    Write ``+PGID``/``-PGID`` lines to ``fd``; keep it open for as long as
    the watchdog must wait. The fd is close-on-exec, and closed in every
    child this process forks (:func:`os.register_at_fork`), so a worker's
    fork children never hold it open after the owner died. The caller reaps
    the watchdog (it is our child) or lets it be re-parented when we exit.
    """
    read_fd, write_fd = os.pipe()
    try:
        pid = os.posix_spawn(
            shell,
            watchdog_argv(shell, pattern, kill_after_s),
            watchdog_env(),
            file_actions=[
                (os.POSIX_SPAWN_DUP2, read_fd, 0),
                (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
            ],
            setsid=True,
        )
    except BaseException:
        os.close(write_fd)
        raise
    finally:
        os.close(read_fd)
    _hold(write_fd)
    return pid, write_fd


def keep_inherited(fd: int) -> None:
    """Hold a write end this process got over an exec (a command runner's watching stage) as ours."""
    os.set_inheritable(fd, False)
    _hold(fd)


#: Write ends of watchdog pipes this process holds: closed in every fork child.
_HELD: set[int] = set()
_HOOKED = False


def _hold(fd: int) -> None:
    global _HOOKED
    _HELD.add(fd)
    if not _HOOKED:
        os.register_at_fork(after_in_child=_close_held)
        _HOOKED = True


def _close_held() -> None:
    for fd in _HELD:
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


def release(fd: int) -> None:
    """Close our end of the watchdog's pipe: it sees end-of-file, sweeps, and exits."""
    if fd in _HELD:
        _HELD.discard(fd)
        try:
            os.close(fd)
        except OSError:
            pass


def tell(fd: int, line: str) -> bool:
    """Write one ``+PGID``/``-PGID`` line; False when the watchdog is gone (its pipe is closed)."""
    try:
        os.write(fd, line.encode() + b"\n")
    except OSError:
        return False
    return True
