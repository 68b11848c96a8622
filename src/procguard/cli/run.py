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
from typing import Any

from ..lifecycle_args import add_lifecycle_arguments
from ..reasons import ExitStatus
from ..units import parse_count, parse_duration

log = logging.getLogger(__name__)

EXIT_STATUS_HELP = f"""\
exit statuses:
  {ExitStatus.OK:<4} completed (--once), stopped on request, or the command exited 0
  {ExitStatus.ERROR:<4} the worker failed: an exception escaped, or the --once iteration failed
  {ExitStatus.USAGE:<4} bad input: unknown flag, bad value, unimportable target, port taken
  {ExitStatus.ALREADY_RUNNING:<4} another instance of --name is running (use --replace to take over)
  {ExitStatus.MAX_RUNTIME:<4} --max-runtime reached, stopped gracefully (planned recycle)
  {ExitStatus.MAX_ITERATIONS:<4} --max-iterations reached (planned recycle)
  {ExitStatus.MEMORY_LIMIT:<4} --memory-limit reached, stopped gracefully (planned recycle)
  {ExitStatus.CPU_LIMIT:<4} --cpu-limit reached, stopped gracefully (planned recycle)
  {ExitStatus.HEARTBEAT_TIMEOUT:<4} the work loop stopped heart-beating
  {ExitStatus.ITERATION_FAILURES:<4} --max-failures consecutive iterations raised
  {ExitStatus.MEMORY_HARD_LIMIT:<4} memory crossed the hard ceiling (1.25 x the limit): stopped at once
  {ExitStatus.GRACE_EXCEEDED:<4} a graceful stop overran --grace, or a second signal: stopped at once
  130, 143  stopped gracefully by SIGINT, SIGTERM
  command mode: otherwise the command's own exit status (128 + N if it died of signal N)

bare numbers keep the seed's units: --interval minutes, --max-runtime hours,
--memory-limit MB, --grace and --drain-delay seconds; suffixes work everywhere (90s, 10m, 24h,
512MB, 2GiB). A limit of 0 means no limit; --health-port 0 disables HTTP.
"""


def _parse_max_failures(text: str) -> int:
    try:
        return parse_count(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _parse_cpu_window(text: str) -> float:
    try:
        seconds = parse_duration(text, default_unit="s")
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if seconds <= 0:
        msg = f"{text!r} must be more than 0 (use a number of seconds or a duration like 30s, 2m)"
        raise argparse.ArgumentTypeError(msg)
    return seconds


def _parse_heartbeat_timeout(text: str) -> float:
    try:
        return parse_duration(text, default_unit="s")
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


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
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EXIT_STATUS_HELP
    parser.add_argument(
        "target", nargs="?", metavar="package.module:function",
        help="function called every --interval (sync or async; gets the manager if it takes an argument)",
    )
    add_lifecycle_arguments(parser)
    group = parser.add_argument_group("runner")
    group.add_argument(
        "--max-failures", dest="max_failures", metavar="N", type=_parse_max_failures, default=None,
        help="stop after N consecutive failed iterations (function mode; default: 5; 0: never)",
    )
    group.add_argument(
        "--cpu-window", dest="cpu_window_s", metavar="DURATION", type=_parse_cpu_window, default=None,
        help="window the CPU limit is averaged over; bare number = seconds (default: 60s)",
    )
    group.add_argument(
        "--heartbeat-timeout", dest="heartbeat_timeout_s", metavar="DURATION", type=_parse_heartbeat_timeout,
        default=None,
        help="function mode: an iteration running longer than this counts as stuck (unhealthy, then "
        "stopped); bare number = seconds (default: 60s; 0: never)",
    )
    group.add_argument(
        "--state-dir", dest="state_dir", metavar="DIR", default=None,
        help="state directory for instance locks (default: $PROCGUARD_STATE_DIR, "
        "$XDG_RUNTIME_DIR/procguard, or a per-user temp dir)",
    )
    parser.set_defaults(command=[])
    _split_command(parser)


def run_run(args: argparse.Namespace) -> int:
    """Run the worker described by ``args``; return its exit status."""
    from ..instances.marker import MARKER_ENV, new_marker
    from ..instances.replace import acquire_instance
    from ..instances.statedir import namespace_of
    from ..runner.options import options_from_args

    cpu_window_given = args.cpu_window_s is not None
    options = options_from_args(args)
    func = None
    if options.mode == "function":
        from ..runner.function import load_target

        func = load_target(options.target or "")  # bad targets fail before any lock is taken
    else:
        from ..runner.command import check_command

        check_command(options.command)
    marker = new_marker(options.name, namespace_of(options.state_dir))
    lock = acquire_instance(
        options.name,
        state_dir=options.state_dir,
        info={"mode": options.mode, "target": options.target or list(options.command)},
        marker=marker,
        replace=options.replace,
        grace_s=options.grace_s,
    )
    try:
        from ..instances.guardian import start_guardian

        # Should this runner be SIGKILLed, the guardian stops whatever carries the marker.
        guardian = start_guardian(marker, grace_s=options.grace_s)
        if func is None:
            from ..health.notify import SystemdNotifier
            from ..runner.command import CommandSupervisor

            # Under a Type=notify unit the runner is the main process: it tells systemd.
            notifier = SystemdNotifier.from_env()
            return CommandSupervisor(
                options, marker=marker, lock=lock, keep_pids={guardian.pid}, notifier=notifier
            ).run()
        from ..runner.function import FunctionLoop

        os.environ[MARKER_ENV] = marker  # the worker's children carry it too
        overrides: dict[str, Any] = {"name": options.name, "max_consecutive_failures": options.max_failures}
        if args.heartbeat_timeout_s is not None:
            overrides["heartbeat_timeout_s"] = args.heartbeat_timeout_s or None
        if cpu_window_given:
            overrides["cpu_window_s"] = overrides["cpu_grace_s"] = options.cpu_window_s
        from ..manager import ProcessManager

        manager = ProcessManager.from_args(args, **overrides)

        def record_health_port() -> None:
            server = manager.health_server
            if server is not None:
                lock.update(health_port=server.port)

        loop = FunctionLoop(func, manager, interval_s=options.interval_s, once=options.once,
                            label=options.target or "", on_started=record_health_port)
        status = loop.run()
        log.info("%s: %d iteration(s), %d failed; exit status %d", options.name, loop.iterations,
                 loop.failures, status)
        return status
    finally:
        lock.release()
