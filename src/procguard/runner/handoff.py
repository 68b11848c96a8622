"""A standalone command runner's exec into its small watching stage.

Why: ``procguard run -- COMMAND`` lives exactly as long as the command, often
for days, and its memory counts against what procguard costs. Parsing the
command line (argparse), taking the lock, starting the orphan watchdog and
the command (subprocess, ctypes) leave modules in the process that watching
never uses again, and Python cannot unload them. So once the command runs,
the runner executes itself again: the same interpreter, the same command
line (``ps`` shows what the user typed), the same PID (systemd's main PID,
the lock's holder, the watchdog's owner and the command's parent all stay
right). The new image reads what the first stage handed over from
:data:`WATCH_ENV` and imports only the watching code:
:class:`~procguard.runner.command.CommandSupervisor`'s loop, the policy, the
/proc readers, and HTTP only when there is a health port.

What crosses the exec: the lock's descriptor (the flock stays held, the
record already names the command), the watchdog pipe's write end, the bound
health port (it never closes, so no probe is refused), the child (still our
unreaped child, so its PID cannot be reused; a fresh pidfd is opened on it),
the subreaper flag (kept by the kernel) and the settings as JSON.

No stop signal is lost: SIGTERM and SIGINT are blocked before the exec, and
a blocked signal stays pending over ``execve``; the watching stage unblocks
them once its handlers are in (:meth:`SignalCapture.install_early`). A
signal caught before the block means a stop is under way: then there is no
exec, and the first stage watches the command itself, as it does when the
exec fails.
"""

from __future__ import annotations

import json
import os
import signal
import sys

from ..deferred_log import get_logger
from ..errors import UsageError
from ..signals import STOP_SIGNALS, unblock_stop_signals
from . import WATCH_ENV

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ..signals import SignalCapture
    from .command import CommandSupervisor

log = get_logger(__name__)  # logging loads on the first message



def exec_watching_stage(runner: CommandSupervisor, capture: SignalCapture) -> None:
    """Replace this process by its watching stage; returns only if that did not happen."""
    child = runner.child
    if child is None or child.returncode is not None:  # already reaped (a command that ended at once)
        return
    if not sys.executable or not hasattr(signal, "pthread_sigmask"):
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    if capture.count:  # a stop is under way: this process sees it through
        unblock_stop_signals()
        return
    listener = runner.health_listener
    lock_fd = runner.lock.fd if runner.lock is not None else None
    state: dict[str, Any] = {
        "name": runner.options.name,
        "command": list(runner.options.command),
        "limits": runner.limits.to_json(),
        "marker": runner.marker,
        "keep_pids": sorted(runner.keep_pids),
        "sample_interval_s": runner.sample_interval_s,
        "started": [runner.started_at, runner.started_wall],
        "child_pid": child.pid,
        "watchdog_fd": runner.watchdog_fd,
        "listener_fd": listener.fileno() if listener is not None else None,
    }
    passed = [fd for fd in (lock_fd, runner.watchdog_fd, state["listener_fd"]) if fd is not None]
    for fd in passed:
        os.set_inheritable(fd, True)
    env = dict(os.environ)
    env[WATCH_ENV] = json.dumps(state)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    try:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    except OSError as error:
        for fd in passed:
            os.set_inheritable(fd, False)
        log.warning("%s: cannot start the watching stage (%s); this process watches the command",
                    runner.options.name, error)
        unblock_stop_signals()


def resume_watching_stage() -> int:
    """The watching stage: rebuild the runner from :data:`WATCH_ENV` and watch the command to its end.

    Returns the runner's exit status. A value that is not a hand-over (set by
    hand) is a :class:`UsageError`, one line, exit 2.
    """
    from ..instances.childproc import ChildHandle
    from ..limits import WorkerLimits
    from .command import CommandSupervisor
    from .options import RunOptions

    text = os.environ.pop(WATCH_ENV, "")
    try:
        state = json.loads(text)
        options = RunOptions(
            mode="command", name=str(state["name"]), target=None,
            command=tuple(str(part) for part in state["command"]),
            limits=WorkerLimits.from_json(state["limits"]), once=False, replace=False, state_dir=None,
        )
        child_pid = int(state["child_pid"])
        started = (float(state["started"][0]), float(state["started"][1]))
        watchdog_fd = state["watchdog_fd"]
        listener_fd = state["listener_fd"]
    except (ValueError, KeyError, TypeError, IndexError) as error:
        msg = f"{WATCH_ENV} is set but is not what 'procguard run' hands over ({error}); unset it"
        raise UsageError(msg) from None
    notifier = None
    if os.environ.get("NOTIFY_SOCKET"):  # only under systemd: no socket code otherwise
        from ..health.notify import SystemdNotifier

        notifier = SystemdNotifier.from_env()
    if watchdog_fd is not None:
        from ..instances.watchdog import keep_inherited

        keep_inherited(int(watchdog_fd))
    listener = None
    if listener_fd is not None:
        import socket

        listener = socket.socket(fileno=int(listener_fd))
    runner = CommandSupervisor(
        options, marker=str(state["marker"]), keep_pids=[int(pid) for pid in state["keep_pids"]],
        sample_interval_s=float(state["sample_interval_s"]), notifier=notifier,
        watchdog_fd=None if watchdog_fd is None else int(watchdog_fd), started=started,
    )
    outcome = runner.resume(ChildHandle(child_pid), listener)
    assert outcome.exit_status is not None
    return outcome.exit_status
