"""``procguard cleanup NAME|all`` and ``procguard cleanup --match PATTERN``.

The safe replacement for ``pkill -9 -f NAME``: it stops what procguard
started under NAME in this state directory (lock holder, marked processes,
their descendants) or,
with ``--match``, our own user's legacy processes whose command line matches,
with their descendants; graceful first (SIGTERM, wait ``--grace``), forced
after. It lists what it found before signalling and reports every process's
result. Exit status 0 when nothing is left, 4 (cleanup incomplete) when
something could not be stopped (EPERM, survived SIGKILL).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from typing import TYPE_CHECKING

from ..errors import UsageError
from ..reasons import ExitStatus
from ..units import parse_duration
from .help_width import sized

if TYPE_CHECKING:
    from pathlib import Path

    from ..instances.cleanup import CleanupReport

log = logging.getLogger(__name__)

DEFAULT_GRACE = "30s"


EPILOG = f"""\
who is stopped:
  NAME     the holder of NAME's instance lock (when its recorded pid + start time
           still match), every process carrying NAME's PROCGUARD_INSTANCE marker
           of this state directory (orphaned, double-forked grandchildren too),
           and their descendants. A process whose command line merely contains
           NAME is not touched.
           NAME may also be a stack's worker name: 'cleanup collector' means
           analyticbot.collector when only stack analyticbot has that worker.
  all      every instance in the state directory and every process carrying
           one of its markers.
  --match  your processes whose full command line matches PATTERN, plus their
           descendants; procguard-managed processes are left to 'cleanup NAME'.
never stopped: pid 1, procguard itself and its ancestors (your shell), other
users' processes, processes whose identity cannot be confirmed, and processes
carrying the marker of another state directory (the state directory is a
namespace: two stacks of the same names in two of them never touch each other).

exit statuses:
  {ExitStatus.OK:<4} nothing is left running (or --dry-run)
  {ExitStatus.USAGE:<4} bad input: name, pattern, --grace, unsafe --state-dir
  {ExitStatus.CLEANUP_INCOMPLETE:<4} something could not be stopped (EPERM, survived SIGKILL); see the report
"""


def configure_cleanup(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = sized(argparse.RawDescriptionHelpFormatter)
    parser.epilog = EPILOG
    parser.add_argument(
        "name",
        nargs="?",
        metavar="NAME|all",
        help="instance name to clean up ('all': every procguard instance and marked process)",
    )
    parser.add_argument(
        "--match",
        metavar="PATTERN",
        help="instead of NAME: our user's processes whose command line matches this regular "
        "expression (as pkill -f would), plus their descendants",
    )
    parser.add_argument("--dry-run", action="store_true", help="list what would be stopped; signal nothing")
    parser.add_argument(
        "--grace",
        default=DEFAULT_GRACE,
        metavar="S",
        help=f"seconds to wait after SIGTERM before SIGKILL (bare number = seconds; default {DEFAULT_GRACE})",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--state-dir", metavar="DIR", help="procguard state directory")


def _compile(pattern: str) -> re.Pattern[str]:
    if not pattern.strip():
        raise UsageError("--match: an empty pattern would match every process (give a regular expression)")
    try:
        return re.compile(pattern)
    except re.error as error:
        raise UsageError(f"--match: {pattern!r} is not a valid regular expression ({error})") from None


def run_cleanup(args: argparse.Namespace) -> int:
    from ..instances.cleanup import CleanupPlan, cleanup_instances, cleanup_matching, resolve_name
    from ..instances.statedir import resolve_state_dir

    if (args.name is None) == (args.match is None):
        raise UsageError("give an instance NAME (or 'all') or --match PATTERN, not both or neither")
    grace = parse_duration(args.grace, default_unit="s", what="--grace")
    # Validate --state-dir up front: a bad one is a usage error even when nothing runs.
    state_dir = resolve_state_dir(args.state_dir, create=False)

    def announce(plan: CleanupPlan) -> None:
        if args.json or args.dry_run:
            return
        if plan.targets:
            print(f"found {len(plan.targets)} process(es) for {plan.selector}:")
            for target in plan.targets:
                row = target.process
                print(f"  {row.pid:>7}  {row.name:<16} {_short(row.command)}  ({target.reason})")
        sys.stdout.flush()

    report: CleanupReport
    if args.match is not None:
        pattern = _compile(args.match)
        report = cleanup_matching(
            pattern, grace_s=grace, state_dir=state_dir, dry_run=args.dry_run, before_execute=announce
        )
    else:
        choice = resolve_name(args.name, state_dir=state_dir, stack_workers=_stack_workers(state_dir))
        report = cleanup_instances(choice.name, grace_s=grace, state_dir=state_dir, dry_run=args.dry_run)
        if choice.note:
            report.notes.insert(0, choice.note)

    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        _print_report(report)
    if report.complete:
        return ExitStatus.OK
    failed = report.failures
    sys.stderr.write(
        "procguard cleanup: incomplete: "
        + "; ".join(f"pid {e.pid} {e.result}{': ' + e.detail if e.detail else ''}" for e in failed)
        + "\n"
    )
    return ExitStatus.CLEANUP_INCOMPLETE


def _stack_workers(state_dir: Path) -> list[str]:
    """``PROJECT.WORKER`` of every stack whose supervisor runs on ``state_dir``."""
    from ..config import load_config
    from ..errors import ProcguardError
    from ..supervisor.control import running_supervisors

    names: list[str] = []
    for supervisor in running_supervisors(state_dir):
        if supervisor.config is None:
            continue
        try:
            config = load_config(supervisor.config)
        except ProcguardError:
            continue  # its file changed or went away; its markers still name its workers
        if config.project.name == supervisor.project:
            names += [f"{supervisor.project}.{worker}" for worker in config.workers]
    return names


def _short(text: str, width: int = 80) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _print_report(report: CleanupReport) -> None:
    verb = "would stop" if report.dry_run else "result"
    if report.entries:
        print(f"{'PID':>7}  {'NAME':<16} {verb.upper():<12} COMMAND / REASON")
        for entry in report.entries:
            result = "would stop" if report.dry_run else entry.result
            print(f"{entry.pid:>7}  {entry.name:<16} {result:<12} {_short(entry.command)}")
            print(f"{'':>7}  {'':<16} {'':<12} {entry.reason}{' -- ' + entry.detail if entry.detail else ''}")
    for spared in report.spared:
        print(f"spared {spared.pid} ({spared.name}): {spared.reason}")
    for note in report.notes:
        print(f"note: {note}")
    print(f"{report.selector}: {report.summary()} in {report.elapsed_s:.2f}s")
