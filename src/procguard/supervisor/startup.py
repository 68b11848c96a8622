"""Starting a stack's supervisor: the steps before the event loop, and ``up --detach``.

:func:`serve` is what ``procguard up`` runs, in the foreground or as the
detached daemon:

1. take the stack's instance lock (``supervisor.PROJECT``): one supervisor
   per stack and state directory; a second one is refused;
2. stop what an earlier supervisor of this stack left running (holding the
   lock proves that supervisor is gone, so every process still carrying one
   of the stack's markers is stale). The scan needs psutil, which the
   supervisor otherwise never loads, so it runs in a forked child
   (:func:`procguard.instances.forked.call_in_fork`);
3. close in history the runs that supervisor left open (``supervisor_died``);
4. build the :class:`~.supervisor.Supervisor` and run it.

The detach protocol lives here too, both ends of it: :func:`start_daemon`
(``up --detach``) starts ``procguard up --ready-fd FD`` in its own session
and waits for one line on a pipe, which :func:`serve` writes once: ``ready
PID`` (every selected worker started), ``already PID`` (the stack's
supervisor already runs: nothing was started twice) or ``error STATUS
MESSAGE``. No line at all means the daemon died first.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import AlreadyRunningError, ProcguardError
from ..reasons import ExitStatus

if TYPE_CHECKING:
    from ..config import StackConfig

logger = logging.getLogger(__name__)

#: How long ``up --detach`` waits for the daemon to report that the workers started.
DETACH_TIMEOUT_S = 120.0

#: The first word of the daemon's one line on the ready pipe.
READY, ALREADY, ERROR = "ready", "already", "error"


class StackRunningError(ProcguardError):
    """``up`` in the foreground while the stack's supervisor runs. Exit status 3."""

    exit_status = ExitStatus.ALREADY_RUNNING

    def __init__(self, project: str, pid: int | None) -> None:
        self.project = project
        self.pid = pid
        super().__init__(
            f"stack {project!r} is already supervised by PID {pid or '?'} "
            "(see 'procguard status'; stop it with 'procguard down')"
        )


# -- the supervisor's side --------------------------------------------------------


def serve(
    config: StackConfig,
    state_dir: Path,
    names: Sequence[str],
    status_port: int | None,
    ready_fd: int | None,
) -> int:
    """Run the stack's supervisor until it is stopped; its exit status.

    ``ready_fd`` is the write end of ``up --detach``'s pipe (None in the
    foreground): it gets exactly one line. In the foreground a running
    supervisor of the stack raises :class:`StackRunningError`; detached it
    answers ``already`` and returns 0 (repeating ``up --detach`` is
    idempotent).
    """
    from .accounts import check_accounts

    try:
        check_accounts(config)  # a worker's user that cannot be had fails `up` in one line, not each start
        return _serve(config, state_dir, list(names), status_port, ready_fd)
    except AlreadyRunningError as error:
        if ready_fd is not None:
            _tell(ready_fd, f"{ALREADY} {error.pid or 0}")
            return ExitStatus.OK
        raise StackRunningError(config.project.name, error.pid) from None
    except ProcguardError as error:
        if ready_fd is not None:
            _tell(ready_fd, f"{ERROR} {error.exit_status} {error}")
        raise


def _serve(
    config: StackConfig, state_dir: Path, names: list[str], status_port: int | None, ready_fd: int | None
) -> int:
    from ..instances.forked import call_in_fork
    from ..instances.lock import InstanceLock
    from .settings import Settings
    from .supervisor import Supervisor

    lock = InstanceLock.acquire(
        f"supervisor.{config.project.name}",
        state_dir=state_dir,
        info={"config": str(config.path), "project": config.project.name},
    )
    try:
        if ready_fd is not None:  # detached: supervisor.log is ours now (we hold the stack's lock)
            _rotate_own_log(config, state_dir)
        survivors = set(call_in_fork(lambda: sorted(clean_stale(config, state_dir))))  # psutil stays out
        close_unfinished_runs(config, state_dir, survivors)
        terminal = None if ready_fd is not None else sys.stdout.buffer
        supervisor = Supervisor(
            config,
            state_dir=state_dir,
            terminal=terminal,
            status_port=status_port,
            settings=Settings.from_env(),
        )

        def ready() -> None:
            if ready_fd is not None:
                _tell(ready_fd, f"{READY} {os.getpid()}")

        try:
            return supervisor.run(names or None, on_ready=ready)
        finally:
            lock.release()
            supervisor.release_waiters()  # 'procguard down' returns now: the stack can be started again
    finally:
        if lock.held:
            lock.release()


def _rotate_own_log(config: StackConfig, state_dir: Path) -> None:
    """The detached supervisor: rotate supervisor.log like the worker logs."""
    from .logs import log_own_output_to, supervisor_log_path

    log_own_output_to(
        supervisor_log_path(state_dir, config.project.name),
        max_bytes=config.project.log_max_bytes,
        backups=config.project.log_backups,
    )


def stack_instance_names(config: StackConfig, known: Iterable[str]) -> set[str]:
    """The instance names of the stack's workers among ``known``: ``PROJECT.X``, and ``PROJECT.X:K``
    for every copy K (however many an earlier supervisor had been scaled to)."""
    project = config.project.name
    workers = {f"{project}.{name}" for name in config.workers}
    copies = set()
    for name in known:
        base, colon, index = name.rpartition(":")
        if colon and index.isdigit() and base in workers:
            copies.add(name)
    return workers | copies


def clean_stale(config: StackConfig, state_dir: Path) -> set[int]:
    """Stop leftovers of an earlier supervisor of this stack (we hold its lock, so all are stale).

    Returns the pids that were still running and have been stopped now.
    """
    from ..instances.cleanup import (
        CleanupPlan,
        Viewpoint,
        execute_plan,
        namespace_names,
        plan_cleanup,
        snapshot_processes,
    )
    from ..instances.lock import list_instances
    from ..proctree import StopResult

    table = snapshot_processes()
    view = Viewpoint.current(state_dir)  # only this state directory's processes are stale
    instances = list_instances(state_dir)
    targets: dict[int, Any] = {}
    for name in sorted(stack_instance_names(config, namespace_names(table, instances, view))):
        plan = plan_cleanup(table, view=view, instances=instances, name=name)
        for target in plan.targets:
            targets.setdefault(target.process.pid, target)
    if not targets:
        return set()
    grace = max(w.limits.grace_s for w in config.workers.values())
    logger.warning("stopping %d stale process(es) of stack %s first", len(targets), config.project.name)
    survivors: set[int] = set()
    for entry in execute_plan(CleanupPlan(f"stack {config.project.name}", tuple(targets.values())), grace):
        logger.info("stale pid %s (%s): %s", entry.pid, entry.name, entry.result)
        if entry.result in (StopResult.TERMINATED, StopResult.KILLED):
            survivors.add(entry.pid)
    return survivors


def close_unfinished_runs(config: StackConfig, state_dir: Path, survivors: set[int]) -> None:
    """History: a ``supervisor_died`` stop for each worker run an earlier supervisor left open."""
    from .history import close_unfinished_runs as close_runs
    from .history import db_path

    project = config.project.name
    stops = close_runs(db_path(state_dir), project, now=time.time(), survivors=survivors)
    if stops:
        logger.warning(
            "history: %d run(s) of stack %s ended with a supervisor that died: %s",
            len(stops),
            project,
            ", ".join(f"{stop.worker} (pid {stop.pid})" for stop in stops),
        )


def _tell(fd: int, message: str) -> None:
    """Write the one line of the ready protocol and close the pipe."""
    try:
        os.write(fd, message.encode() + b"\n")
        os.close(fd)
    except OSError:
        pass


# -- up --detach's side -------------------------------------------------------------


@dataclass(frozen=True)
class DaemonAnswer:
    """What the detached supervisor said on the ready pipe.

    ``word`` is :data:`READY`, :data:`ALREADY`, :data:`ERROR`, or ``""``
    when it exited (or timed out) without a word; ``exit_status`` is what
    ``up --detach`` exits with.
    """

    word: str
    supervisor_pid: str = ""
    exit_status: int = ExitStatus.OK
    detail: str = ""


def parse_answer(line: str) -> DaemonAnswer:
    """The daemon's line, read (pure)."""
    word, _, rest = line.partition(" ")
    if word in (READY, ALREADY):
        return DaemonAnswer(word, supervisor_pid=rest)
    status, detail = int(ExitStatus.ERROR), "the supervisor exited before starting the workers"
    if word == ERROR:
        code, _, detail = rest.partition(" ")
        status = int(code) if code.isdigit() else int(ExitStatus.ERROR)
        return DaemonAnswer(ERROR, exit_status=status, detail=detail)
    return DaemonAnswer("", exit_status=status, detail=detail)


def start_daemon(
    config: StackConfig,
    state_dir: Path,
    names: Sequence[str],
    status_port: int | None,
    *,
    timeout_s: float = DETACH_TIMEOUT_S,
) -> DaemonAnswer:
    """Start ``procguard up`` for ``config`` in its own session and wait for its answer.

    The daemon's output goes to the stack's ``supervisor.log`` (which it
    rotates itself once it holds the stack's lock).
    """
    from .logs import log_dir, open_log, supervisor_log_path

    project = config.project.name
    log_dir(state_dir, project, create=True)
    log_file = supervisor_log_path(state_dir, project)
    read_fd, write_fd = os.pipe()
    argv = [
        sys.executable,
        "-m",
        "procguard",
        "up",
        *names,
        "-c",
        str(config.path),
        "--state-dir",
        str(state_dir),
        "--ready-fd",
        str(write_fd),
    ]
    if status_port is not None:
        argv += ["--status-port", str(status_port)]
    with os.fdopen(open_log(log_file), "ab") as log:  # never through a symlink planted there
        subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            pass_fds=(write_fd,),
            close_fds=True,
            cwd="/",
        )
    os.close(write_fd)
    return parse_answer(_read_answer(read_fd, timeout_s))


def _read_answer(fd: int, timeout: float) -> str:
    import select

    data = b""
    deadline = time.monotonic() + timeout
    try:
        while b"\n" not in data:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            readable, _, _ = select.select([fd], [], [], remaining)
            if not readable:
                break
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    return data.decode(errors="replace").strip()
