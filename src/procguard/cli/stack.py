"""``procguard up/down/status/start/stop/restart/logs/history``: a whole stack.

``up`` runs the supervisor (:mod:`procguard.supervisor`) in the foreground
or, with ``--detach``, as a daemon; the other commands talk to it through
its control socket in the state directory, or read its files (``logs``,
``history``) directly, so they work from any shell.

Which stack: ``-c FILE``, else ``./procguard.toml``, else the supervisor
running on the state directory (its lock records its config), chosen by
``--project NAME`` when several run. ``logs`` and ``history`` also serve a
stack that has stopped: ``--project NAME``, or the only project that left
history (or logs) in the state directory.

Exit statuses (documented in the command help):

- ``up`` in the foreground: 0 after a requested stop, 1 if the stop had to
  be forced, 3 if a supervisor of the same stack already runs.
- ``up --detach``: 0 once the workers are started, and also 0 when the
  stack's supervisor is already running (nothing started twice: repeating
  ``up --detach`` is idempotent, as a deploy script wants), 1 if the daemon
  could not start.
- ``status``: 0 when every worker is in the state it was asked to be in, 1
  when any is FATAL or in BACKOFF (restarting after failures), 3 when no
  supervisor runs for the stack (LSB's "program is not running").
- ``start``, ``stop``, ``restart``: 3 when no supervisor runs for the stack;
  ``down`` then says so and exits 0 (the stack is down, which is what was
  asked).
- An unknown worker name: 2, listing the known ones. No stack named while
  several run: 2, listing their project names.
- ``logs``: 1 when the worker has no log file (yet).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..errors import ProcguardError, UsageError
from ..reasons import ExitStatus
from ..units import format_duration, parse_count, parse_port

if TYPE_CHECKING:
    from ..config import StackConfig

logger = logging.getLogger(__name__)


# -- shared flags and helpers --------------------------------------------------


def _common(parser: argparse.ArgumentParser, *, find: bool = True) -> None:
    parser.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        help="the stack's config (default: ./procguard.toml"
        + (", else the stack running on the state directory)" if find else ")"),
    )
    if find:
        parser.add_argument(
            "--project",
            metavar="NAME",
            help="the stack's project name, when several run on the state directory "
            "(or to read the logs/history of one that has stopped)",
        )
    parser.add_argument("--state-dir", metavar="DIR", help="procguard state directory")


def _worker_name(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="a worker of procguard.toml")


def _load(args: argparse.Namespace) -> tuple[StackConfig, Path]:
    from ..config import load_config
    from ..instances.statedir import resolve_state_dir

    config = load_config(args.config)
    state_dir = resolve_state_dir(args.state_dir)
    return config, state_dir


def _check_names(config: StackConfig, names: list[str]) -> None:
    for name in names:
        if name not in config.workers:
            msg = f"unknown worker {name!r} in {config.path} (use one of: {', '.join(config.workers)})"
            raise UsageError(msg)


@dataclass(frozen=True)
class Target:
    """The stack a control command acts on, however it was identified.

    ``config`` is None when the stack is known only by its project name: a
    stack that has stopped (``logs``, ``history``), or a running one whose
    ``procguard.toml`` cannot be read any more. The supervisor then checks
    worker names itself.
    """

    project: str
    state_dir: Path
    config: StackConfig | None = None

    def check_names(self, names: list[str]) -> None:
        """UsageError for a worker the config does not have (only a valid name without one)."""
        if self.config is not None:
            _check_names(self.config, names)
            return
        from ..config import NAME_ACCEPTED, NAME_RE

        for name in names:
            if not NAME_RE.match(name):
                msg = f"worker name {name!r} is not valid (use {NAME_ACCEPTED})"
                raise UsageError(msg)

    def budget(self, name: str | None = None) -> float:
        """How long to wait for a stop: the grace of ``name`` (of the slowest worker) + 30 s."""
        if self.config is None:
            return UNKNOWN_STOP_BUDGET_S
        if name is not None:
            return self.config.workers[name].limits.grace_s + 30.0
        return max(w.limits.grace_s for w in self.config.workers.values()) + 30.0


#: How long to wait for a stop when the stack's config (its grace) is unknown.
UNKNOWN_STOP_BUDGET_S = 600.0


class NoStackError(ProcguardError):
    """``logs``/``history`` found no stack to read: none runs, none left files. Exit status 1.

    ``history`` turns it into an empty listing (nothing has happened here).
    """

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        super().__init__(f"no stack has run in state directory {state_dir} (pass -c FILE or --project NAME)")


def _target(args: argparse.Namespace, *, files: Literal["history", "logs"] | None = None) -> Target:
    """Identify the stack a command acts on (from any shell).

    In order: ``-c FILE``; ``./procguard.toml`` (unless ``--project`` is
    given); the supervisor running on the state directory with that
    ``--project`` name, or the only one running. Several running and no way to
    choose: UsageError listing them. None running: NotRunningError (exit 3),
    unless ``files`` names what the command reads ("history", "logs"): then
    the only project that left those files is used (a stack that has stopped).
    """
    from ..config import DEFAULT_FILENAME, NAME_ACCEPTED, NAME_RE, load_config
    from ..instances.statedir import resolve_state_dir
    from ..supervisor.control import NotRunningError, running_supervisors

    state_dir = resolve_state_dir(args.state_dir)
    project: str | None = args.project
    if project is not None and not NAME_RE.match(project):
        msg = f"--project: {project!r} is not a valid project name (use {NAME_ACCEPTED})"
        raise UsageError(msg)
    if args.config is not None or (project is None and Path(DEFAULT_FILENAME).is_file()):
        config = load_config(args.config)
        if project is not None and project != config.project.name:
            msg = (
                f"--project {project!r} does not match {config.path} (its project is {config.project.name!r})"
            )
            raise UsageError(msg)
        return Target(config.project.name, state_dir, config)
    running = running_supervisors(state_dir)
    if project is not None:
        for supervisor in running:
            if supervisor.project == project:
                return Target(project, state_dir, _running_config(supervisor.project, supervisor.config))
        return Target(project, state_dir)
    if len(running) == 1:
        only = running[0]
        return Target(only.project, state_dir, _running_config(only.project, only.config))
    if running:
        names = ", ".join(s.project for s in running)
        msg = f"{len(running)} stacks are running in {state_dir}: {names} (pass -c FILE or --project NAME)"
        raise UsageError(msg)
    if files is None:
        raise NotRunningError(None, state_dir)
    known = _projects_with_files(state_dir, files)
    if len(known) == 1:
        return Target(known[0], state_dir)
    if known:
        msg = (
            f"no stack is running in {state_dir} and {len(known)} have {files}: "
            f"{', '.join(known)} (pass --project NAME or -c FILE)"
        )
        raise UsageError(msg)
    raise NoStackError(state_dir)


def _running_config(project: str, path: Path | None) -> StackConfig | None:
    """The config a running supervisor was started with, if it still reads as that stack."""
    from ..config import load_config

    if path is None:
        return None
    try:
        config = load_config(path)
    except ProcguardError as error:
        logger.warning("stack %s: cannot use its config (%s); going on without it", project, error)
        return None
    if config.project.name != project:
        logger.warning(
            "stack %s: %s now names project %r; going on without it", project, path, config.project.name
        )
        return None
    return config


def _projects_with_files(state_dir: Path, files: Literal["history", "logs"]) -> list[str]:
    """Projects that left ``history`` (events) or ``logs`` (events or a log directory)."""
    from ..config import NAME_RE
    from ..supervisor.history import db_path, read_projects

    projects = set(read_projects(db_path(state_dir)))
    if files == "logs":
        logs = state_dir / "logs"
        if logs.is_dir():
            projects.update(p.name for p in logs.iterdir() if p.is_dir() and NAME_RE.match(p.name))
    return sorted(projects)


def _request(target: Target, payload: dict[str, Any], timeout: float) -> dict[str, Any]:
    from ..supervisor.control import request, socket_path

    path = socket_path(target.state_dir, target.project)
    return request(path, payload, project=target.project, timeout=timeout)


def _supervisor_pid(config: StackConfig, state_dir: Path) -> int | None:
    from ..supervisor.control import NotRunningError

    try:
        reply = _request(Target(config.project.name, state_dir, config), {"cmd": "ping"}, timeout=5.0)
    except (NotRunningError, OSError):
        return None
    pid = reply.get("pid")
    return pid if isinstance(pid, int) else None


# -- up ---------------------------------------------------------------------------


def configure_up(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Start the workers of procguard.toml (all, or NAME... and what they depend on) and "
        "supervise them: restarts with backoff, logs, history, status page. Ctrl-C stops them all; "
        "a second Ctrl-C kills them. Exit status 3 if this stack's supervisor already runs "
        "(with --detach: 0, nothing is started twice)."
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help="workers to start (default: all)")
    _common(parser, find=False)
    parser.add_argument(
        "-d", "--detach", action="store_true", help="run in the background; return once started"
    )
    parser.add_argument(
        "--status-port",
        metavar="P",
        help="serve the status page, /api/workers and /metrics on this port "
        "(0: off; default: [project] status_port)",
    )
    parser.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)


def run_up(args: argparse.Namespace) -> int:
    from ..supervisor.startup import serve

    config, state_dir = _load(args)
    _check_names(config, args.names)
    from ..health.tls import check_stack  # ssl itself only when TLS is configured

    check_stack(config)  # a bad certificate, key or token file: exit 2 before any start
    status_port = None if args.status_port is None else parse_port(args.status_port, what="--status-port")
    if args.detach:
        return _detach(args, config, state_dir, status_port)
    return serve(config, state_dir, args.names, status_port, args.ready_fd)


def _detach(args: argparse.Namespace, config: StackConfig, state_dir: Path, status_port: int | None) -> int:
    from ..supervisor.logs import log_dir, supervisor_log_path
    from ..supervisor.startup import ALREADY, READY, start_daemon

    project = config.project.name
    pid = _supervisor_pid(config, state_dir)
    if pid is not None:
        print(f"stack {project!r} is already running (supervisor PID {pid}); nothing started")
        return ExitStatus.OK
    answer = start_daemon(config, state_dir, args.names, status_port)
    supervisor = answer.supervisor_pid
    if answer.word == READY:
        logs = log_dir(state_dir, project)
        print(f"stack {project!r} started (supervisor PID {supervisor}); logs in {logs}")
        return ExitStatus.OK
    if answer.word == ALREADY:
        print(f"stack {project!r} is already running (supervisor PID {supervisor}); nothing started")
        return ExitStatus.OK
    sys.stderr.write(f"procguard up: {answer.detail} (see {supervisor_log_path(state_dir, project)})\n")
    return answer.exit_status


# -- down -------------------------------------------------------------------------


def configure_down(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Stop all workers of the stack (in parallel, each within its grace) and the supervisor; "
        "returns when everything has stopped. Exit status 0 also when nothing was running."
    )
    _common(parser)


def run_down(args: argparse.Namespace) -> int:
    from ..supervisor.control import NotRunningError, connect, socket_path, wait_closed

    try:
        target = _target(args)
    except NotRunningError as error:
        print(f"no stack is running in state directory {error.path}")
        return ExitStatus.OK
    project = target.project
    try:
        sock = connect(socket_path(target.state_dir, project), project=project, timeout=10.0)
    except NotRunningError:
        print(f"stack {project!r} is not running")
        return ExitStatus.OK
    budget = target.budget()
    started = time.monotonic()
    with sock:
        sock.sendall(b'{"cmd": "down"}\n')
        if not wait_closed(sock, budget):
            sys.stderr.write(f"procguard down: stack {project!r} still stopping after {budget:.0f}s\n")
            return ExitStatus.ERROR
    print(f"stack {project!r} stopped in {time.monotonic() - started:.2f}s")
    return ExitStatus.OK


# -- status -------------------------------------------------------------------------


#: States that mean a worker is not as it was asked to be: ``status`` exits 1.
TROUBLED_STATES = ("fatal", "backoff")


def configure_status(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Show each worker's state, pid, uptime, restarts, memory and last exit. "
        "Exit status 0 when every worker is as asked, 1 when any is fatal or in backoff, "
        "3 when no supervisor runs for the stack."
    )
    _common(parser)
    parser.add_argument("--json", action="store_true", help="print a JSON list of worker objects")


def run_status(args: argparse.Namespace) -> int:
    target = _target(args)
    reply = _request(target, {"cmd": "status"}, timeout=10.0)
    workers: list[dict[str, Any]] = reply.get("workers", [])
    troubled = any(w.get("state") in TROUBLED_STATES for w in workers)
    status = ExitStatus.ERROR if troubled else ExitStatus.OK
    if args.json:
        print(json.dumps(workers, indent=2))
        return status
    print(f"stack {target.project} (supervisor PID {reply.get('pid')})")
    rows = [["NAME", "STATE", "PID", "UPTIME", "RESTARTS", "MEMORY", "LAST EXIT"]]
    for w in workers:
        last = w.get("last_exit") or {}
        rows.append(
            [
                w["name"],
                w["state"],
                str(w["pid"] or "-"),
                "-" if w["uptime_seconds"] is None else format_duration(w["uptime_seconds"]),
                str(w["restarts"]),
                "-" if w["memory_mb"] is None else f"{w['memory_mb']:.1f} MB",
                str(last.get("reason", "-")),
            ]
        )
    _print_table(rows)
    return status


def _short(text: str, width: int = 90) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _print_table(rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


# -- start / stop / restart ----------------------------------------------------------


def configure_start(parser: argparse.ArgumentParser) -> None:
    parser.description = "Start a stopped (or FATAL) worker of the running supervisor."
    _worker_name(parser)
    _common(parser)


def configure_stop(parser: argparse.ArgumentParser) -> None:
    parser.description = "Stop one worker (SIGTERM, SIGKILL after its grace); it stays stopped until started."
    _worker_name(parser)
    _common(parser)


def configure_restart(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Stop one worker gracefully and start it again (clears FATAL and its start-limit count)."
    )
    _worker_name(parser)
    _common(parser)


def _worker_command(args: argparse.Namespace, cmd: str) -> int:
    target = _target(args)
    target.check_names([args.name])
    reply = _request(target, {"cmd": cmd, "name": args.name}, timeout=target.budget(args.name))
    if not reply.get("ok"):
        sys.stderr.write(f"procguard {cmd}: {reply.get('error', 'failed')}\n")
        return int(reply.get("exit_status", ExitStatus.ERROR))
    print(reply.get("message", "ok"))
    return ExitStatus.OK


def run_start(args: argparse.Namespace) -> int:
    return _worker_command(args, "start")


def run_stop(args: argparse.Namespace) -> int:
    return _worker_command(args, "stop")


def run_restart(args: argparse.Namespace) -> int:
    return _worker_command(args, "restart")


# -- logs -----------------------------------------------------------------------------


def configure_logs(parser: argparse.ArgumentParser) -> None:
    parser.description = "Print the last lines of a worker's log file (works without a running supervisor)."
    _worker_name(parser)
    _common(parser)
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing new lines (Ctrl-C ends)")
    parser.add_argument("-n", "--lines", default="50", metavar="N", help="how many lines (default 50)")


def run_logs(args: argparse.Namespace) -> int:
    from ..supervisor.logs import follow, log_path, tail

    lines = parse_count(args.lines, what="--lines")
    target = _target(args, files="logs")
    target.check_names([args.name])
    path = log_path(target.state_dir, target.project, args.name)
    if not path.exists():
        others = ""
        if target.config is None:
            logged = sorted(p.name[: -len(".log")] for p in path.parent.glob("*.log"))
            others = f"; logs of stack {target.project!r}: {', '.join(logged) or 'none'}"
        sys.stderr.write(f"procguard logs: no log for {args.name!r} yet ({path} does not exist{others})\n")
        return ExitStatus.ERROR
    out = sys.stdout.buffer
    for line in tail(path, lines):
        out.write(line + b"\n")
    out.flush()
    if args.follow:
        for chunk in follow(path):
            out.write(chunk)
            out.flush()
    return ExitStatus.OK


# -- history ----------------------------------------------------------------------------


def configure_history(parser: argparse.ArgumentParser) -> None:
    parser.description = "Show past starts and stops of the stack's workers, newest first."
    _common(parser)
    parser.add_argument("--json", action="store_true", help="print a JSON list of events")
    parser.add_argument(
        "-n", "--lines", default="50", metavar="N", help="how many events (default 50; 0: all)"
    )
    parser.add_argument("--worker", metavar="NAME", help="only this worker")


def run_history(args: argparse.Namespace) -> int:
    from ..supervisor.history import Event, db_path, read_events

    limit = parse_count(args.lines, what="--lines")
    try:
        target: Target | None = _target(args, files="history")
    except NoStackError:
        target = None  # nothing has ever run here: an empty history
    events: list[Event] = []
    if target is not None:
        if args.worker:
            target.check_names([args.worker])
        path = db_path(target.state_dir)
        events = read_events(path, project=target.project, limit=0 if args.worker else limit)
        if args.worker:
            known = sorted({e.worker for e in events})
            if target.config is None and args.worker not in known:
                msg = (
                    f"unknown worker {args.worker!r} in the history of stack {target.project!r} "
                    f"(use one of: {', '.join(known)})"
                )
                raise UsageError(msg)
            events = [e for e in events if e.worker == args.worker][: limit or None]
    if args.json:
        print(json.dumps([e.to_json() for e in events], indent=2))
        return ExitStatus.OK
    rows = [["TIME", "WORKER", "EVENT", "PID", "REASON", "STATUS", "RUNTIME", "PEAK MEMORY", "DETAIL"]]
    for e in events:
        rows.append(
            [
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.time)),
                e.worker,
                e.event,
                str(e.pid or "-"),
                e.reason or "-",
                "-" if e.exit_status is None else str(e.exit_status),
                "-" if e.runtime_seconds is None else format_duration(e.runtime_seconds),
                "-" if not e.peak_memory_bytes else f"{e.peak_memory_bytes / (1024 * 1024):.1f} MB",
                _short(e.detail or "-"),
            ]
        )
    _print_table(rows)
    return ExitStatus.OK
