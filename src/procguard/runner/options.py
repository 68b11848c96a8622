"""The settings of one ``procguard run``, parsed and checked once.

:func:`options_from_args` turns the argparse namespace into a frozen
:class:`RunOptions`: the mode (a ``package.module:function`` target, or a
command after ``--``), the name, and the worker's
:class:`~procguard.limits.WorkerLimits` -- from the flags, on top of the
settings ``procguard up`` handed over through the worker's link when it
started this runner. Flags that make no sense for the chosen mode are
refused here with one line, instead of being silently ignored.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Literal, NamedTuple

from ..errors import UsageError
from ..limits import SETTINGS, WorkerLimits

if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence

#: ``package.module:function`` (dots allowed in the function part for ``Class.method``).
TARGET_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_.]*\Z")

Mode = Literal["function", "command"]


class RunOptions(NamedTuple):
    """Everything ``procguard run`` needs; the worker's settings are one :class:`WorkerLimits`.

    A NamedTuple (no ``dataclasses``): the command runner's watching stage
    rebuilds it after its exec and stays small.
    """

    mode: Mode
    name: str
    target: str | None
    command: tuple[str, ...]
    limits: WorkerLimits
    once: bool
    replace: bool
    state_dir: str | None


def _sanitize(text: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_.@+-]+", "-", text).strip("-.")
    return cleaned[:100] or "worker"


def derive_name(target: str | None, command: Sequence[str]) -> str:
    """The default instance name: the target itself, or the program (``-m`` module or script stem).

    ``examples.analyticbot.collector:collect`` -> same; ``python -m
    examples.analyticbot.bot --every 5`` -> ``examples.analyticbot.bot``;
    ``./sync.sh`` -> ``sync``.
    """
    if target:
        return _sanitize(target.replace(":", "."))
    argv = list(command)
    program = os.path.basename(argv[0]) if argv else "worker"
    if re.match(r"python[0-9.]*\Z", program) and len(argv) > 1:
        first = argv[1]
        if first == "-m" and len(argv) > 2:
            return _sanitize(argv[2])
        if not first.startswith("-"):
            program = os.path.basename(first)
    stem = program.rsplit(".", 1)[0] if "." in program.lstrip(".") else program
    return _sanitize(stem)


def options_from_args(args: argparse.Namespace, *, base: WorkerLimits | None = None) -> RunOptions:
    """Check the parsed flags against each other and build :class:`RunOptions`.

    ``base`` is the settings a supervisor handed over (the flags given
    override them). Raises :class:`UsageError` (exit 2, one line) for a
    missing or doubled target, a malformed ``module:function``, and flags that
    apply only to a loop procguard runs (``--once``, ``--interval``,
    ``--max-iterations``, ``--max-failures``, ``--heartbeat-timeout``) given
    with a command.
    """
    target: str | None = args.target
    command = tuple(args.command or ())
    if target and command:
        msg = (
            f"give either a target ({target!r}) or a command after '--' "
            f"({' '.join(command)!r}), not both"
        )
        raise UsageError(msg)
    if not target and not command:
        msg = "no target: give package.module:function, or -- COMMAND ARGS..."
        raise UsageError(msg)
    if target and not TARGET_RE.match(target):
        msg = (
            f"target {target!r} is not package.module:function "
            "(to run a program, put it after '--': procguard run -- COMMAND ARGS...)"
        )
        raise UsageError(msg)
    from ..lifecycle_args import given_settings, limits_from_args  # argparse: only where flags are read

    mode: Mode = "function" if target else "command"
    given = given_settings(args)
    if mode == "command":
        loop_only = [s.flag for s in SETTINGS if s.applies == "loop" and s.field in given]
        if args.once:
            loop_only.insert(0, "--once")
        if loop_only:
            msg = f"{loop_only[0]} applies only to a package.module:function target, not to a command"
            raise UsageError(msg)
    else:
        command_only = [s.flag for s in SETTINGS if s.applies == "command" and s.field in given]
        if command_only:
            msg = f"{command_only[0]} applies only to a command after '--', not to a module:function target"
            raise UsageError(msg)
    return RunOptions(
        mode=mode,
        name=args.name or derive_name(target, command),
        target=target,
        command=command,
        limits=limits_from_args(args, base=base),
        once=bool(args.once),
        replace=bool(args.replace),
        state_dir=args.state_dir,
    )
