"""Start this runner again with the instance marker in its own environment.

Why: should a standalone ``procguard run`` be SIGKILLed, its watchdog finds
what to stop by the marker in ``/proc/PID/environ``. That file shows the
environment a process was *executed* with. Setting ``os.environ`` later
reaches the programs a worker execs, but not the children it only forks
(``multiprocessing`` with the fork start method, a double-forked daemon):
they show the runner's original environment, without the marker, and
would outlive it unseen. Executing the same command line again with the
marker added puts it where every descendant inherits it. The PID stays the
same, so a shell, systemd or a lock that knows the runner still knows it.

Only function mode needs this, and only outside ``procguard up``: a command
is started with the marker in its environment, and a worker under ``up``
was started with the supervisor's marker already there.

No stop signal is lost on the way: SIGTERM and SIGINT are blocked before the
exec, and the blocked mask and whatever arrives meanwhile (pending) survive
``execve``; the new process unblocks them once its handlers are installed
(:meth:`procguard.signals.SignalCapture.install_early`, the first thing
``procguard run`` does). A signal caught before the
block means the run is stopping anyway: then there is no exec at all.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

from ..signals import STOP_SIGNALS, SignalCapture, unblock_stop_signals

log = logging.getLogger(__name__)


def reexec_with_env(name: str, value: str) -> None:
    """Replace this process by the same command line with ``name=value`` in its environment.

    Returns only if it did not happen: a stop signal was already caught
    (the run stops before its first iteration, so there is nothing to mark),
    or the interpreter cannot be executed again (logged; the run goes on
    with the marker in ``os.environ`` only).
    """
    if not sys.executable or not hasattr(signal, "pthread_sigmask"):
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    if SignalCapture.early_count():  # already stopping: no iteration will run, nothing to mark
        unblock_stop_signals()
        return
    env = dict(os.environ)
    env[name] = value
    argv = [sys.executable, *sys.orig_argv[1:]]
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    try:
        os.execve(sys.executable, argv, env)  # handlers reset; blocked and pending signals carry over
    except OSError as error:
        log.warning("cannot start %s again with %s in its environment (%s): forked children of the "
                    "worker will not carry it", sys.executable, name, error)
        unblock_stop_signals()
