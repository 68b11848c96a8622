"""The settings of one ``procguard run``, parsed and checked once.

:func:`options_from_args` turns the argparse namespace into a frozen
:class:`RunOptions` in base units (seconds, bytes, percent), with ``None``
for "no limit", and decides the mode: a ``package.module:function`` target
(function mode) or a command after ``--`` (command mode). Flags that make no
sense for the chosen mode are refused here with one line, instead of being
silently ignored.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from ..errors import UsageError

#: Consecutive failed iterations that stop a function worker when --max-failures is not given.
DEFAULT_MAX_FAILURES = 5
#: CPU averaging window of command mode when --cpu-window is not given (the library's default).
DEFAULT_CPU_WINDOW_S = 60.0

#: ``package.module:function`` (dots allowed in the function part for ``Class.method``).
TARGET_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_.]*\Z")

Mode = Literal["function", "command"]


@dataclass(frozen=True)
class RunOptions:
    """Everything ``procguard run`` needs, in base units; ``None`` means "no limit"."""

    mode: Mode
    name: str
    target: str | None
    command: tuple[str, ...]
    interval_s: float
    max_runtime_s: float | None
    max_iterations: int | None
    memory_limit_bytes: int | None
    cpu_limit_percent: float | None
    cpu_window_s: float
    health_port: int | None
    health_host: str
    grace_s: float
    drain_delay_s: float
    once: bool
    replace: bool
    max_failures: int | None
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


def _positive_or_none(value: float | int | None) -> float | int | None:
    return value if value else None


def options_from_args(args: argparse.Namespace) -> RunOptions:
    """Check the parsed flags against each other and build :class:`RunOptions`.

    Raises :class:`UsageError` (exit 2, one line) for a missing or doubled
    target, a malformed ``module:function``, and flags that do not apply
    to command mode (``--once``, ``--max-iterations``, ``--max-failures``,
    ``--heartbeat-timeout``).
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
    mode: Mode = "function" if target else "command"
    if mode == "command":
        for flag, given in (
            ("--once", args.once),
            ("--max-iterations", args.max_iterations is not None),
            ("--max-failures", args.max_failures is not None),
            ("--heartbeat-timeout", getattr(args, "heartbeat_timeout_s", None) is not None),
        ):
            if given:
                msg = f"{flag} applies only to a package.module:function target, not to a command"
                raise UsageError(msg)
    name = args.name or derive_name(target, command)
    max_failures = DEFAULT_MAX_FAILURES if args.max_failures is None else args.max_failures
    return RunOptions(
        mode=mode,
        name=name,
        target=target,
        command=command,
        interval_s=float(args.interval_s),
        max_runtime_s=_positive_or_none(args.max_runtime_s),
        max_iterations=args.max_iterations or None,
        memory_limit_bytes=args.memory_limit_bytes or None,
        cpu_limit_percent=_positive_or_none(args.cpu_limit_percent),
        cpu_window_s=DEFAULT_CPU_WINDOW_S if args.cpu_window_s is None else float(args.cpu_window_s),
        health_port=args.health_port or None,
        health_host=args.health_host,
        grace_s=float(args.grace_s),
        drain_delay_s=float(getattr(args, "drain_delay_s", 0.0) or 0.0),
        once=bool(args.once),
        replace=bool(args.replace),
        max_failures=max_failures or None,
        state_dir=args.state_dir,
    )
