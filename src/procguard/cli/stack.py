"""``procguard up/down/status/start/stop/restart/signal/scale/reload/logs/history``: a whole stack.

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
- ``start``, ``stop``, ``restart``, ``signal``, ``reload``: 3 when no
  supervisor runs for the stack; ``down`` then says so and exits 0 (the
  stack is down, which is what was asked). 1 when a worker did not make the
  transition (could not start; ``signal``: was not running).
- Worker names are words of :mod:`procguard.supervisor.selection` (names:
  every copy of a worker, one copy ``X:K``, ``all``, shell patterns): a word
  that matches no worker is 2, listing the known ones, and nothing is done.
  No stack named while several run: 2, listing their project names.
- ``reload``: 2 for a file that does not load or changes what a running
  stack cannot take; nothing is applied then.
- ``logs``: 1 when there is no log file (yet).
- ``scale``: 0 once the copies it added run or the ones it took away have
  stopped; 2 for a count outside 1..64 or a health port a new copy would
  share; 3 when no supervisor runs.
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
from .colour import error as error_line

if TYPE_CHECKING:
    from ..config import StackConfig
    from ..copies import Address

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


def _load(args: argparse.Namespace) -> tuple[StackConfig, Path]:
    from ..config import load_config
    from ..instances.statedir import resolve_state_dir

    config = load_config(args.config)
    state_dir = resolve_state_dir(args.state_dir)
    return config, state_dir


def _selected(config: StackConfig, words: list[str]) -> list[str]:
    """The workers of ``config`` that ``words`` select (names, ``all``, shell patterns; a copy
    ``X:K`` selects worker ``X``: how many copies run is the supervisor's to say)."""
    from ..supervisor.selection import select

    return select(_as_workers(words), list(config.workers)) if words else []


def _as_workers(words: list[str]) -> list[str]:
    """``X:K`` -> ``X`` (patterns and plain names as they are), to check words against a file."""
    from ..copies import parse_address
    from ..supervisor.selection import is_pattern

    return [parse_address(w).name if ":" in w and not is_pattern(w) else w for w in words]


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
        """UsageError for a name or pattern that selects no worker of the config (only a valid
        name or pattern without one)."""
        from ..supervisor.selection import check_words, select

        check_words(names)
        if self.config is not None:
            select(_as_workers(names), list(self.config.workers))

    def budget(self, words: list[str] | None = None) -> float:
        """How long to wait for stops: the drain + grace of the workers ``words`` select (of all),
        one after the other as a dependency chain may need, + 30 s."""
        from ..supervisor.selection import select

        if self.config is None:
            return UNKNOWN_STOP_BUDGET_S
        workers = self.config.workers
        names = list(workers)
        if words is not None:
            try:
                names = select(_as_workers(words), names)
            except UsageError:
                pass  # the running supervisor may know them (a reload since): wait for all
        return sum(workers[name].limits.stop_budget_s for name in names) + 30.0


#: How long to wait for a stop when the stack's config (its grace) is unknown.
UNKNOWN_STOP_BUDGET_S = 600.0


class NoStackError(ProcguardError):
    """``logs``/``history`` found no stack to read: none runs, none left files. Exit status 1.

    ``history`` turns it into an empty listing (nothing has happened here).
    """

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        super().__init__(f"no stack has run in state directory {state_dir} (pass -c FILE or --project NAME)")


def _target(
    args: argparse.Namespace, *, files: Literal["history", "logs"] | None = None, read_config: bool = True
) -> Target:
    """Identify the stack a command acts on (from any shell).

    In order: ``-c FILE``; ``./procguard.toml`` (unless ``--project`` is
    given); the supervisor running on the state directory with that
    ``--project`` name, or the only one running. Several running and no way to
    choose: UsageError listing them. None running: NotRunningError (exit 3),
    unless ``files`` names what the command reads ("history", "logs"): then
    the only project that left those files is used (a stack that has stopped).
    ``read_config=False``: a running stack found on the state directory is
    reached by its project name alone (``reload``: the supervisor reads its
    file itself and says what is wrong with it).
    """
    from ..config import DEFAULT_FILENAME, NAME_ACCEPTED, NAME_RE, load_config
    from ..instances.statedir import resolve_state_dir
    from ..supervisor.control import NotRunningError, RunningSupervisor, running_supervisors

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
    if not read_config:
        running = [RunningSupervisor(s.project, s.pid, None) for s in running]
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
        "a second Ctrl-C kills them; SIGHUP re-reads procguard.toml (as 'procguard reload'). Exit "
        "status 3 if this stack's supervisor already runs (with --detach: 0, nothing is started twice)."
    )
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help="workers to start: names or shell patterns (default: all)"
    )
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
    args.names = _selected(config, args.names)
    from ..health.tls import check_stack  # ssl itself only when TLS is configured

    check_stack(config)  # a bad certificate, key or token file: exit 2 before any start
    status_port = None if args.status_port is None else parse_port(args.status_port, what="--status-port")
    if args.detach:
        return _detach(args, config, state_dir, status_port)
    return serve(config, state_dir, args.names, status_port, args.ready_fd)


#: What ``up -d`` says of a running stack, pointing a user who changed procguard.toml to reload.
NOTHING_STARTED = "nothing started (to apply changes to procguard.toml: procguard reload)"


def _detach(args: argparse.Namespace, config: StackConfig, state_dir: Path, status_port: int | None) -> int:
    from ..supervisor.logs import log_dir, supervisor_log_path
    from ..supervisor.startup import ALREADY, READY, start_daemon

    project = config.project.name
    pid = _supervisor_pid(config, state_dir)
    if pid is not None:
        print(f"stack {project!r} is already running (supervisor PID {pid}); {NOTHING_STARTED}")
        return ExitStatus.OK
    answer = start_daemon(config, state_dir, args.names, status_port)
    supervisor = answer.supervisor_pid
    if answer.word == READY:
        logs = log_dir(state_dir, project)
        print(f"stack {project!r} started (supervisor PID {supervisor}); logs in {logs}")
        return ExitStatus.OK
    if answer.word == ALREADY:
        print(f"stack {project!r} is already running (supervisor PID {supervisor}); {NOTHING_STARTED}")
        return ExitStatus.OK
    error_line(f"procguard up: {answer.detail} (see {supervisor_log_path(state_dir, project)})")
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
            error_line(f"procguard down: stack {project!r} still stopping after {budget:.0f}s")
            return ExitStatus.ERROR
    print(f"stack {project!r} stopped in {time.monotonic() - started:.2f}s")
    return ExitStatus.OK


# -- status -------------------------------------------------------------------------


#: States that mean a worker is not as it was asked to be: ``status`` exits 1.
TROUBLED_STATES = ("fatal", "backoff")


def configure_status(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Show each worker's state, pid, uptime, restarts, memory, CPU and last exit "
        "(NAME...: only those workers). "
        "Exit status 0 when every worker is as asked, 1 when any is fatal or in backoff, "
        "3 when no supervisor runs for the stack."
    )
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help="only these workers (all their copies) or copies NAME:K"
    )
    _common(parser)
    parser.add_argument("--json", action="store_true", help="print a JSON list of worker objects")


def run_status(args: argparse.Namespace) -> int:
    target = _target(args)
    target.check_names(args.names)
    payload: dict[str, Any] = {"cmd": "status"}
    if args.names:
        payload["names"] = args.names
    reply = _request(target, payload, timeout=10.0)
    if not reply.get("ok", True):
        error_line(f"procguard status: {reply.get('error', 'failed')}")
        return int(reply.get("exit_status", ExitStatus.ERROR))
    workers: list[dict[str, Any]] = reply.get("workers", [])
    troubled = any(w.get("state") in TROUBLED_STATES for w in workers)
    status = ExitStatus.ERROR if troubled else ExitStatus.OK
    if args.json:
        print(json.dumps(workers, indent=2))
        return status
    print(f"stack {target.project} (supervisor PID {reply.get('pid')})")
    rows = [["NAME", "STATE", "PID", "UPTIME", "RESTARTS", "MEMORY", "CPU", "LAST EXIT"]]
    for w in workers:
        last = w.get("last_exit") or {}
        cpu = w.get("cpu_percent")
        rows.append(
            [
                w["name"],
                w["state"],
                str(w["pid"] or "-"),
                "-" if w["uptime_seconds"] is None else format_duration(w["uptime_seconds"]),
                str(w["restarts"]),
                "-" if w["memory_mb"] is None else f"{w['memory_mb']:.1f} MB",
                "-" if cpu is None else f"{cpu:.1f}%",
                str(last.get("reason", "-")),
            ]
        )
    _print_table(rows, state_column=1)
    for line in _autoscale_lines(workers):
        print(line)
    return status


def _autoscale_lines(workers: list[dict[str, Any]]) -> list[str]:
    """One line per autoscaled worker: its rule and the latest reading (the first copy carries it)."""
    lines: list[str] = []
    seen: set[str] = set()
    for w in workers:
        rule = w.get("autoscale")
        group = str(w.get("worker") or w["name"])
        if not rule or group in seen:
            continue
        seen.add(group)
        value = rule.get("value")
        if value is None:
            reading = "no reading yet"
        else:
            unknown = f", {rule['copies_unknown']} unknown" if rule.get("copies_unknown") else ""
            reading = f"now {value:g} ({rule['copies_read']} read{unknown}), wants {rule['wanted']}"
        lines.append(
            f"{group}: autoscale {rule['min']}..{rule['max']} copies on {rule['metric']}"
            f" (target {rule['target']:g} per copy): {reading}"
        )
    return lines


def _short(text: str, width: int = 90) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _print_table(rows: list[list[str]], *, state_column: int | None = None) -> None:
    from .table import print_table

    print_table(rows, states=() if state_column is None else (state_column,))


# -- start / stop / restart / signal ---------------------------------------------------


def _worker_words(parser: argparse.ArgumentParser) -> None:
    from ..supervisor.selection import ACCEPTED

    parser.add_argument("names", nargs="+", metavar="NAME", help=f"{ACCEPTED}; several may be given")


def configure_start(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Start stopped (or FATAL) workers of the running supervisor, each once what it depends on "
        "runs; one line per worker. "
        "NAME: a worker (every copy), one copy NAME:K, 'all', or a shell pattern ('coll*'). "
        "Exit status 0 once all are started, 1 if any could not start, 2 if a NAME matches no worker."
    )
    _worker_words(parser)
    _common(parser)


def configure_stop(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Stop workers (SIGTERM, SIGKILL after their grace), those that depend on others first; they "
        "stay stopped until started. "
        "NAME: a worker (every copy), one copy NAME:K, 'all', or a shell pattern ('coll*'). "
        "Exit status 0 once all have stopped, 2 if a NAME matches no worker (nothing is stopped)."
    )
    _worker_words(parser)
    _common(parser)


def configure_restart(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Stop workers gracefully (in reverse dependency order) and start them again (in dependency "
        "order); clears FATAL and the start-limit count. NAME: a worker, 'all', or a shell pattern."
    )
    _worker_words(parser)
    _common(parser)


def _print_lines(cmd: str, reply: dict[str, Any]) -> int:
    """Print a supervisor's answer about several workers: one line each; exit 1 if any failed."""
    lines = reply.get("lines")
    if not isinstance(lines, list):  # one error for the whole request
        error_line(f"procguard {cmd}: {reply.get('error', 'failed')}")
        return int(reply.get("exit_status", ExitStatus.ERROR))
    for line in lines:
        if line.get("ok"):
            print(line.get("message", ""))
        else:
            error_line(f"procguard {cmd}: {line.get('message', 'failed')}")
    return ExitStatus.OK if reply.get("ok") else int(reply.get("exit_status", ExitStatus.ERROR))


def _worker_command(args: argparse.Namespace, cmd: str, **extra: Any) -> int:
    from ..supervisor.control import NotRunningError
    from ..supervisor.selection import check_words

    check_words(args.names)
    target = _target(args)
    try:
        payload = {"cmd": cmd, "names": args.names, **extra}
        reply = _request(target, payload, timeout=target.budget(args.names))
    except NotRunningError:
        target.check_names(args.names)  # an unknown name is the first thing to hear about
        raise
    return _print_lines(cmd, reply)


def run_start(args: argparse.Namespace) -> int:
    return _worker_command(args, "start")


def run_stop(args: argparse.Namespace) -> int:
    return _worker_command(args, "stop")


def run_restart(args: argparse.Namespace) -> int:
    return _worker_command(args, "restart")


def configure_signal(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Send a signal to the main process of workers (not to their process group: the worker "
        "decides what its children get), e.g. HUP to reopen logs or reload. NAME: a worker, "
        "'all', or a shell pattern. One line per worker. Exit status 0 when every worker got it, "
        "1 if any was not running (the others still get it), 2 for an unknown worker or signal. "
        "A signal that ends a worker counts as a stop procguard did not ask for (use 'procguard "
        "stop' to stop one)."
    )
    _worker_words(parser)
    parser.add_argument("signal", metavar="SIG", help="a signal name or number: HUP, SIGUSR1, 10")
    _common(parser)


def parse_signal(text: str) -> int:
    """``HUP``, ``SIGHUP``, ``sighup`` or ``1`` -> 1; UsageError (one line, with examples) otherwise."""
    import signal

    word = text.strip().upper()
    number: int | None = None
    if word.isdigit():
        number = int(word)
    else:
        name = word if word.startswith("SIG") else "SIG" + word
        member = getattr(signal.Signals, "__members__", {}).get(name)
        number = None if member is None else int(member)
    if number is None or number not in {int(s) for s in signal.valid_signals()}:
        msg = f"{text!r} is not a signal (use a name or number such as HUP, SIGUSR1, TERM or 10)"
        raise UsageError(msg)
    return number


def run_signal(args: argparse.Namespace) -> int:
    signum = parse_signal(args.signal)
    return _worker_command(args, "signal", signal=signum)


# -- reload -------------------------------------------------------------------------------


def configure_reload(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Re-read the procguard.toml the running supervisor was started with and apply the "
        "difference: added workers start, removed ones stop, changed ones restart with the new "
        "settings (a changed instances adds or removes copies), unchanged ones are not touched "
        "(same PID). One line per worker. An invalid file "
        "changes nothing (exit status 2, the error 'procguard check' gives); so does a change of "
        "project.name, status_port or status_host, which cannot change while the stack runs. "
        "Exit status 1 if a worker could not be started. SIGHUP to 'procguard up' does the same. "
        "With NAME (a worker, NAME:K, 'all' or a shell pattern): a zero-downtime reload of each copy "
        "instead: a new process starts beside the old one, and once it is ready (its /ready, or "
        "ready_after of running) the old one is drained and stopped; not ready within ready_timeout, "
        "or exited first: the new one is stopped, the old one keeps serving, exit status 1 naming why."
    )
    from ..supervisor.selection import ACCEPTED

    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"reload these workers blue-green ({ACCEPTED}); none: re-read procguard.toml")
    _common(parser)


# -- scale ----------------------------------------------------------------------------------


def configure_scale(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Run N copies of a worker in the running stack: new copies NAME:K start at once; "
        "scaling down stops the newest copies first, one at a time, each as 'procguard stop' does. "
        "The count lasts until the stack stops (procguard.toml's instances is what the next 'up' runs)."
    )
    parser.add_argument("name", metavar="NAME", help="a worker of procguard.toml")
    parser.add_argument(
        "count", metavar="N", help="how many copies (1 to 64; 'procguard stop NAME' stops them all)"
    )
    _common(parser)


def run_reload(args: argparse.Namespace) -> int:
    if args.names:
        return _reload_copies(args)
    target = _target(args, read_config=False)
    reply = _request(target, {"cmd": "reload"}, timeout=target.budget())
    return _print_lines("reload", reply)


def _reload_copies(args: argparse.Namespace) -> int:
    """``procguard reload NAME...``: waits for the slowest copy: its ready_timeout, then its stop."""
    from ..supervisor.control import NotRunningError
    from ..supervisor.selection import check_words

    check_words(args.names)
    target = _target(args)
    ready = UNKNOWN_STOP_BUDGET_S
    if target.config is not None:
        ready = max(w.ready_timeout_s for w in target.config.workers.values())
    try:
        payload = {"cmd": "reload", "names": args.names}
        reply = _request(target, payload, timeout=target.budget(args.names) + ready)
    except NotRunningError:
        target.check_names(args.names)
        raise
    return _print_lines("reload", reply)


def run_scale(args: argparse.Namespace) -> int:
    from ..copies import parse_address
    from ..copies import parse_count as parse_copies

    count = parse_copies(args.count, what="N")
    address = parse_address(args.name)
    if address.copy is not None:
        raise UsageError(f"scale takes a worker, not a copy ({args.name!r}; use {address.name})")
    target = _target(args)
    target.check_names([args.name])
    # Scaling down stops one copy after the other: wait for as many stops as there are copies.
    running = _request(target, {"cmd": "status", "names": [args.name]}, timeout=10.0)
    have = len(running.get("workers", [])) if running.get("ok", True) else 0
    timeout = max(1, have - count) * target.budget([args.name])
    reply = _request(target, {"cmd": "scale", "name": args.name, "count": count}, timeout=timeout)
    return _print_lines("scale", reply)


# -- logs -----------------------------------------------------------------------------


def configure_logs(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Print the last lines of workers' logs (works without a running supervisor). One NAME: its "
        "lines as they are; no NAME (all workers), several, or a shell pattern: their lines "
        "interleaved in time order, each behind 'name | ' (a worker with copies: every copy's, "
        "'api:2 | '). NAME 'supervisor': the supervisor's own log. "
        "Exit status 1 when there is no log yet."
    )
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help="a worker, 'all', a shell pattern, or 'supervisor' (default: all workers)",
    )
    _common(parser)
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing new lines (Ctrl-C ends)")
    parser.add_argument(
        "-n", "--lines", metavar="N", help="how many lines (default 50; with --since: all since then)"
    )
    parser.add_argument(
        "--since",
        metavar="WHEN",
        help="only lines from then on: a duration back from now (10m, 2h) or a time (2026-11-30T09:42)",
    )


def _logged_workers(target: Target) -> list[str]:
    """Logs ``logs`` may show: each worker of the config with its copies' logs (``api``,
    ``api:2``...), then any other worker with a log file here."""
    from ..config import NAME_RE
    from ..supervisor.logs import SUPERVISOR_LOG, log_dir

    stems: list[str] = []
    directory = log_dir(target.state_dir, target.project)
    if directory.is_dir():
        stems = [p.name[: -len(".log")] for p in directory.glob("*.log") if p.name != SUPERVISOR_LOG]
    by_worker: dict[str, list[str]] = {}
    for stem in stems:
        worker, _, index = stem.partition(":")
        if NAME_RE.match(worker) and (not index or index.isdigit()):
            by_worker.setdefault(worker, []).append(stem)
    order = list(target.config.workers) if target.config is not None else []
    order += sorted(name for name in by_worker if name not in order)
    names: list[str] = []
    for worker in order:
        logs = sorted(by_worker.get(worker, []), key=lambda n: int(n.partition(":")[2] or 0))
        names += logs or [worker]
    return names


def _copies_of(names: list[str]) -> dict[str, tuple[str, int]]:
    """Each log name's worker and copy number, for :func:`procguard.supervisor.selection.select`."""
    found = {}
    for name in names:
        worker, _, index = name.partition(":")
        found[name] = (worker, int(index) if index.isdigit() else 1)
    return found


def run_logs(args: argparse.Namespace) -> int:
    from ..config import SUPERVISOR_NAME
    from ..supervisor.logview import since_stamp
    from ..supervisor.selection import check_words, is_pattern, select

    check_words(args.names)
    since = None if args.since is None else since_stamp(args.since)
    lines: int | None = 50
    if args.lines is not None:
        lines = parse_count(args.lines, what="--lines")
    elif since is not None:
        lines = None
    target = _target(args, files="logs")
    # 'supervisor' (never a worker's name) is the supervisor's own log, alone or among workers.
    own = [SUPERVISOR_NAME] if SUPERVISOR_NAME in args.names else []
    words = [word for word in args.names if word != SUPERVISOR_NAME]
    if own and not words:
        return _one_log(args, target, SUPERVISOR_NAME, lines, since)
    known = _logged_workers(target)
    if target.config is None and len(words) == 1 and not own and not is_pattern(words[0]):
        # A stack known by its logs only: the name may be right and its log not written yet.
        return _one_log(args, target, words[0], lines, since)
    if words and not known:
        error_line(f"procguard logs: no logs of stack {target.project!r} yet")
        return ExitStatus.ERROR
    selected = (select(words, known, _copies_of(known)) if words else known) + own
    if words and len(selected) == 1:
        return _one_log(args, target, selected[0], lines, since)
    return _many_logs(args, target, selected, lines, since)


def _one_log(
    args: argparse.Namespace, target: Target, name: str, lines: int | None, since: bytes | None
) -> int:
    from ..config import SUPERVISOR_NAME
    from ..supervisor.logs import follow, log_path
    from ..supervisor.logview import merge, read_log

    path = log_path(target.state_dir, target.project, name)
    if not path.exists() and name == SUPERVISOR_NAME:
        error_line(
            f"procguard logs: no supervisor log of stack {target.project!r} ({path} does not exist): "
            "a supervisor started without --detach logs to the terminal it runs in"
        )
        return ExitStatus.ERROR
    if not path.exists():
        others = ""
        if target.config is None:
            logged = sorted(p.name[: -len(".log")] for p in path.parent.glob("*.log"))
            others = f"; logs of stack {target.project!r}: {', '.join(logged) or 'none'}"
        error_line(f"procguard logs: no log for {name!r} yet ({path} does not exist{others})")
        return ExitStatus.ERROR
    out = sys.stdout.buffer
    content = read_log(path, lines=lines if since is None else None)  # --since: read back past N
    for _, line in merge([(name, content)], lines=lines, since=since):
        out.write(line + b"\n")
    out.flush()
    if args.follow:
        for chunk in follow(path):
            out.write(chunk)
            out.flush()
    return ExitStatus.OK


def _many_logs(
    args: argparse.Namespace, target: Target, names: list[str], lines: int | None, since: bytes | None
) -> int:
    from ..supervisor.logs import log_path
    from ..supervisor.logview import Line, Prefixer, follow_logs, merge, read_log
    from . import colour

    paths = {name: log_path(target.state_dir, target.project, name) for name in names}
    present = {name: path for name, path in paths.items() if path.exists()}
    if not present and not args.follow:
        error_line(f"procguard logs: no logs of stack {target.project!r} yet")
        return ExitStatus.ERROR
    out = sys.stdout.buffer
    prefix = Prefixer(names, colour=colour.wanted(sys.stdout))
    each = lines if since is None else None
    contents = [(name, read_log(path, lines=each)) for name, path in present.items()]
    for name, line in merge(contents, lines=lines, since=since):
        out.write(prefix(name, line))
    out.flush()
    if not args.follow:
        return ExitStatus.OK

    def current() -> dict[str, Path]:
        if args.names:
            return paths  # the workers named: their logs, once they appear
        return {name: log_path(target.state_dir, target.project, name) for name in _logged_workers(target)}

    def emit(batch: list[Line]) -> None:
        out.write(b"".join(prefix(name, line) for name, line in batch))
        out.flush()

    follow_logs(current, emit)
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


def _names_copy(address: Address, worker: str) -> bool:
    """True when history's ``worker`` (a copy's name) is what ``address`` names."""
    if address.copy is None:
        return worker == address.name or worker.startswith(f"{address.name}:")
    return worker == str(address) or (address.copy == 1 and worker == address.name)


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
            from ..copies import parse_address

            address = parse_address(args.worker)
            known = sorted({e.worker for e in events})
            wanted = {e.worker for e in events if _names_copy(address, e.worker)}
            if target.config is None and not wanted:
                msg = (
                    f"unknown worker {args.worker!r} in the history of stack {target.project!r} "
                    f"(use one of: {', '.join(known)})"
                )
                raise UsageError(msg)
            events = [e for e in events if e.worker in wanted][: limit or None]
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
