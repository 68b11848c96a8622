"""Entry point of the ``procguard`` command.

Only the module of the subcommand being run is imported, so ``procguard
--help`` and ``procguard status`` start fast. A subcommand module defines,
for each command ``NAME`` it serves, ``configure_NAME(parser)`` (adds flags)
and ``run_NAME(args) -> int`` (does the work, returns the exit status).
Errors derived from :class:`~procguard.errors.ProcguardError` are printed as
one line with their own exit status; a traceback is never shown for them.

This module imports almost nothing at the top: ``procguard run`` installs its
stop-signal handlers before anything else loads (see :func:`main`), since
until then a SIGTERM kills it by the default action.
"""

from __future__ import annotations

import os
import sys

from .. import __version__

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

    from .parser import CommandParser

#: command -> (module under procguard.cli, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("run", "run a function or a command as a managed worker"),
    "ps": ("instances", "list running instances started with 'procguard run'"),
    "cleanup": ("cleanup", "stop every instance and leftover process of a name, safely"),
    "up": ("stack", "start the workers of procguard.toml and supervise them"),
    "down": ("stack", "stop the running supervisor and all its workers"),
    "status": ("stack", "show the state of the supervised workers"),
    "start": ("stack", "start stopped workers of the running supervisor (names, globs, all)"),
    "stop": ("stack", "stop workers of the running supervisor (names, globs, all)"),
    "restart": ("stack", "restart workers of the running supervisor (names, globs, all)"),
    "signal": ("stack", "send a signal (HUP, USR1, ...) to workers of the running supervisor"),
    "scale": ("stack", "change how many copies of a worker the running supervisor runs"),
    "reload": ("stack", "re-read procguard.toml and apply the changes to the running stack"),
    "logs": ("stack", "print (or follow) the logs of one worker, or of all, interleaved"),
    "history": ("stack", "show past starts and stops, newest first"),
    "check": ("check", "validate procguard.toml without starting anything"),
    "deploy": ("deploy", "generate systemd, supervisord, Kubernetes or Prometheus files"),
    "completion": ("completion", "print the shell completion script for bash or zsh"),
}

_LOG_FORMAT = "%(asctime)s procguard[%(process)d] %(levelname)s %(name)s: %(message)s"


def _top_level_help() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [
        "usage: procguard COMMAND [options]",
        "",
        "Keep long-running workers well behaved: bounded life, graceful stop,",
        "health over HTTP, one instance per name, no orphans.",
        "",
        "commands:",
    ]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += [
        "",
        "options:",
        "  -h, --help     show this help and exit",
        "  --version      print the version and exit",
        "",
        "Run 'procguard COMMAND --help' for the options of a command.",
    ]
    return "\n".join(lines)


def _configure_logging() -> None:
    import logging

    level_name = os.environ.get("PROCGUARD_LOG_LEVEL", "INFO").upper()
    level = getattr(logging, level_name, None)
    if not isinstance(level, int):
        level = logging.INFO
    logging.basicConfig(level=level, format=_LOG_FORMAT, stream=sys.stderr)


def _error(line: str) -> None:
    from .colour import error

    error(line)


def build_parser(command: str) -> tuple[CommandParser, object]:
    """The parser of one subcommand and its module (used by main and the docs)."""
    import importlib

    from .parser import CommandParser

    module_name, help_ = COMMANDS[command]
    module = importlib.import_module(f"procguard.cli.{module_name}")
    parser = CommandParser(prog=f"procguard {command}", description=help_[0].upper() + help_[1:] + ".")
    getattr(module, f"configure_{command.replace('-', '_')}")(parser)
    return parser, module


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``procguard`` command line and return its exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["run"]:
        # First thing: from here on a SIGTERM is a graceful stop, even before the worker runs.
        from ..signals import SignalCapture

        SignalCapture.install_early()
    try:
        return _main(args)
    except BrokenPipeError:
        # The reader went away (`procguard history | head`): quiet, like a
        # killed-by-SIGPIPE program, and no second error at interpreter exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13


def _main(args: list[str]) -> int:
    from ..errors import ProcguardError
    from ..reasons import ExitStatus

    if not args or args[0] in ("-h", "--help", "help"):
        print(_top_level_help())
        return ExitStatus.OK if args else ExitStatus.USAGE
    if args[0] == "--version":
        print(f"procguard {__version__}")
        return ExitStatus.OK
    command, rest = args[0], args[1:]
    from ..runner import WATCH_ENV

    if command == "run" and os.environ.get(WATCH_ENV):
        # A standalone command runner after its exec into the watching stage: no parser, no lock code.
        from ..deferred_log import configure_when_used
        from ..runner.handoff import resume_watching_stage

        configure_when_used(_configure_logging)  # the watching stage imports logging only to log
        try:
            return resume_watching_stage()
        except ProcguardError as error:
            _error(f"procguard {command}: {error}")
            return int(error.exit_status)
    if command not in COMMANDS:
        _error(f"procguard: unknown command {command!r} (use one of: {', '.join(COMMANDS)})")
        return ExitStatus.USAGE
    try:
        parser, module = build_parser(command)
        namespace = parser.parse_args(rest)
        _configure_logging()
        return int(getattr(module, f"run_{command.replace('-', '_')}")(namespace))
    except ProcguardError as error:
        _error(f"procguard {command}: {error}")
        return int(error.exit_status)
    except KeyboardInterrupt:
        return 128 + 2


if __name__ == "__main__":
    raise SystemExit(main())
