"""The orphan guard: a tiny process that kills the workers if the supervisor dies.

Why it exists: a parent-death signal reaches only the supervisor's direct
children, and a worker that dies by it leaves its own children
(``multiprocessing`` workers, ``daemon=True`` or not) running: measured,
every peer leaves the worker *and* 4 of 4 grandchildren alive when it is
SIGKILLed (FIELD.md). Each worker leads its own process group; the
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

import subprocess

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
