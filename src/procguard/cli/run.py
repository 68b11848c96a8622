"""``procguard run``: turn a function or a command into a managed worker.

::

    procguard run package.module:function [flags]      # function mode
    procguard run [flags] -- COMMAND ARGS...            # command mode

Both modes hold the single-instance lock of ``--name`` for the whole run
(``--replace`` stops a running instance first) and carry the instance
marker. Function mode runs the target in this process under a
:class:`~procguard.manager.ProcessManager`
(:mod:`procguard.runner.function`); command mode supervises the program
from outside (:mod:`procguard.runner.command`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from ..lifecycle_args import add_lifecycle_arguments, add_setting_arguments
from ..limits import SETTINGS
from ..reasons import REASONS, ExitStatus, StopReason
from .help_width import sized

log = logging.getLogger(__name__)


def _exit_status_help() -> str:
    """The epilog of ``procguard run --help``: exit statuses and units, from their one table."""
    rows = [
        (str(ExitStatus.OK), "completed (--once), stopped on request, or the command exited 0"),
        (str(ExitStatus.ERROR), "the worker failed: an exception escaped, or the --once iteration failed"),
        (str(ExitStatus.USAGE), "bad input: unknown flag, bad value, unimportable target, port taken"),
        (str(ExitStatus.ALREADY_RUNNING), "another instance of --name runs (--replace takes over)"),
    ]
    for reason, info in REASONS.items():
        if isinstance(info.status, int) and info.status >= ExitStatus.MAX_RUNTIME:
            rows.append((str(info.status), f"{reason}: {info.words}"))
    rows.append(("130, 143", f"{StopReason.SIGNAL}: {REASONS[StopReason.SIGNAL].words}"))
    lines = ["exit statuses:"]
    lines += [f"  {code:<9} {words}" for code, words in rows]
    lines.append("  command mode: otherwise the command's own exit status (128 + N if it died of signal N)")
    bare = ", ".join(f"{s.flag} {s.bare_words}" for s in SETTINGS if s.flag_scope != "none" and s.bare_words)
    lines += [
        "",
        f"bare numbers keep the seed's units: {bare}; suffixes work everywhere (90s, 10m, 24h,",
        "512MB, 2GiB). A limit of 0 means no limit; --health-port 0 disables HTTP.",
    ]
    return "\n".join(lines) + "\n"


def _split_command(parser: argparse.ArgumentParser) -> None:
    """Make ``parser`` treat everything after the first ``--`` as the command.

    argparse alone cannot tell ``run -- a:b`` (a command) from ``run a:b`` (a
    target): it drops the ``--``. Splitting before argparse sees the line
    keeps the two apart exactly, and keeps the command's own flags
    (``-- python -m x --once``) away from ours.
    """
    original = parser.parse_known_args

    def parse_known_args(
        args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        argv = list(sys.argv[1:] if args is None else args)
        command: list[str] = []
        if "--" in argv:
            cut = argv.index("--")
            argv, command = argv[:cut], argv[cut + 1 :]
        ns, extras = original(argv, namespace)
        ns.command = command
        return ns, extras

    # An instance attribute shadows the method for this one parser only.
    setattr(parser, "parse_known_args", parse_known_args)  # noqa: B010


def configure_run(parser: argparse.ArgumentParser) -> None:
    """Add the flags of ``procguard run`` (the seed's lifecycle flags plus runner options)."""
    parser.usage = (
        "%(prog)s [options] package.module:function\n       %(prog)s [options] -- COMMAND [ARGS...]"
    )
    parser.formatter_class = sized(argparse.RawDescriptionHelpFormatter)
    parser.epilog = _exit_status_help()
    parser.add_argument(
        "target", nargs="?", metavar="package.module:function",
        help="function called every --interval (sync or async; gets the manager if it takes an argument)",
    )
    add_lifecycle_arguments(parser)
    group = parser.add_argument_group("runner")
    add_setting_arguments(group, [s for s in SETTINGS if s.flag_scope == "run"])
    group.add_argument(
        "--state-dir", dest="state_dir", metavar="DIR", default=None,
        help="state directory for instance locks (default: $PROCGUARD_STATE_DIR, "
        "$XDG_RUNTIME_DIR/procguard, or a per-user temp dir)",
    )
    parser.set_defaults(command=[])
    _split_command(parser)


def run_run(args: argparse.Namespace) -> int:
    """Run the worker described by ``args``; return its exit status."""
    from ..instances.marker import MARKER_ENV, inherited_marker, new_marker
    from ..instances.replace import BESIDE_ENV, acquire_instance
    from ..instances.statedir import namespace_of
    from ..limits import WorkerLimits
    from ..parent_link import claim
    from ..runner.options import options_from_args

    link = claim()  # under procguard up: the supervisor's settings and the way to report
    handed = link.settings() if link is not None else None
    options = options_from_args(args, base=None if handed is None else WorkerLimits.from_json(handed))
    namespace = namespace_of(options.state_dir)
    marker = inherited_marker(options.name, namespace) or new_marker(options.name, namespace)
    func = None
    if options.mode == "function":
        from ..runner.function import load_target

        if link is None and os.environ.get(MARKER_ENV) != marker:
            from ..runner.reexec import reexec_with_env

            # So that children the worker only forks carry the marker too (returns if it cannot).
            reexec_with_env(MARKER_ENV, marker)
        func = load_target(options.target or "")  # bad targets fail before any lock is taken
    else:
        from ..runner.command import check_command

        check_command(options.command)
    beside = os.environ.pop(BESIDE_ENV, "") if link is not None else ""
    lock = acquire_instance(
        options.name,
        beside=int(beside) if beside.isdigit() else None,  # a reload's new generation (procguard up)
        state_dir=options.state_dir,
        info={"mode": options.mode, "target": options.target or list(options.command)},
        marker=marker,
        replace=options.replace,
        grace_s=options.limits.grace_s,
    )
    try:
        helpers: set[int] = set()
        watchdog_fd: int | None = None
        if link is None:
            from ..instances.marker import exact_pattern
            from ..instances.watchdog import start_watchdog

            # Should this runner be SIGKILLed, the watchdog (a small /bin/sh script) stops the
            # command's process group and whatever carries the marker. Under a supervisor there
            # is none: the supervisor's own watchdog and leftover sweep do that job for every worker.
            watchdog_pid, watchdog_fd = start_watchdog(
                exact_pattern(marker), kill_after_s=options.limits.grace_s
            )
            helpers.add(watchdog_pid)
        if func is None:
            from ..health.notify import SystemdNotifier
            from ..runner.command import CommandSupervisor
            from ..runner.handoff import exec_watching_stage

            # Under a Type=notify unit the runner is the main process: it tells systemd.
            notifier = SystemdNotifier.from_env()
            # Standalone, the runner then executes itself into its small watching stage.
            return CommandSupervisor(
                options, marker=marker, lock=lock, keep_pids=helpers, notifier=notifier, link=link,
                watchdog_fd=watchdog_fd, exec_to_watch=exec_watching_stage if link is None else None,
            ).run()
        from ..manager import ProcessManager
        from ..runner.function import FunctionLoop

        os.environ[MARKER_ENV] = marker  # the worker's children carry it too
        manager = ProcessManager(name=options.name, limits=options.limits, helper_pids=helpers,
                                 state_dir=options.state_dir)  # its claim finds the lock taken above

        def record_health_port() -> None:
            server = manager.health_server
            if server is not None:
                lock.update(health_port=server.port)

        loop = FunctionLoop(func, manager, once=options.once, label=options.target or "",
                            on_started=record_health_port)
        status = loop.run()
        log.info("%s: %d iteration(s), %d failed; exit status %d", options.name, loop.iterations,
                 loop.failures, status)
        return status
    finally:
        lock.release()
