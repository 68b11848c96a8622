"""The procguard exception tree, and how a user's value appears in a message.

Every error a user can cause derives from :class:`ProcguardError` and carries
the fields that explain it; the CLI prints ``str(error)`` as one line and exits
with ``error.exit_status`` — never a traceback. :func:`shown` is the one way a
value the user typed (a name, a path, a flag's value) is put into a message:
quoted, escaped and bounded, so that no value can add a line to a message or
bury it under ten thousand characters. :func:`exit_status_of` gives a
worker's own ``main()`` the same behaviour as the ``procguard`` command.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TextIO

from .reasons import ExitStatus

#: The longest part of a user's value a message shows, in characters: enough
#: to recognise the value, short enough to keep the message on one screen line.
SHOWN_MAX = 80

#: The same for a file path, which is long more often than a value is.
PATH_SHOWN_MAX = 400


def _escaped(text: str) -> str:
    """``text`` with every character that is not printable written as its escape."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def shown(value: object, *, quote: bool = True, limit: int = SHOWN_MAX) -> str:
    """How a user's value appears in a message: one line, at most ``limit`` characters of it.

    Strings are quoted as Python quotes them (``'12XB'``), so a newline, a
    tab, a terminal escape or a Unicode line separator appears as its escape
    (``'a\\nb'``) and cannot start a new line or hide the rest of the message.
    ``quote=False`` escapes the same characters without the quotes (for a key
    path such as ``workers.a\\nb``, or a file name). A value longer than
    ``limit`` characters is cut there and its length is given:
    ``'aaaa…' (10000 characters)``. Anything else is shown by its ``repr``
    under the same bound.
    """
    if not isinstance(value, str):
        text = _escaped(repr(value))
        if len(text) <= limit:
            return text
        return f"{text[:limit]}… ({len(text)} characters)"
    if len(value) <= limit:
        return repr(value) if quote else _escaped(value)
    head = value[:limit]
    if quote:
        quoted = repr(head)
        return f"{quoted[:-1]}…{quoted[-1]} ({len(value)} characters)"
    return f"{_escaped(head)}… ({len(value)} characters)"


def one_line(text: str) -> str:
    """``text`` with line breaks and other unprintable characters escaped (``\\n``)."""
    return _escaped(text)


class ProcguardError(Exception):
    """Base class for every procguard error; ``str()`` is always one line."""

    exit_status: int = ExitStatus.ERROR

    def __str__(self) -> str:
        # The last guard: whatever a message was built from, it prints as one line.
        return one_line(super().__str__())


class UsageError(ProcguardError, ValueError):
    """Bad input from the user: a flag, a value, a config key. Exit status 2.

    The message names the bad value and what is accepted, e.g.
    ``--memory-limit: '12XB' is not a size (use a number of MB or 512MB, 2GiB)``.
    """

    exit_status = ExitStatus.USAGE


class ConfigError(UsageError):
    """A mistake in procguard.toml; the message names file and key.

    The file and the key path are shown escaped and bounded (a worker name
    is part of the key path and may hold anything TOML can quote).
    """

    def __init__(self, message: str, *, path: str | None = None, key: str | None = None) -> None:
        self.path = path
        self.key = key
        parts = [shown(path, quote=False, limit=PATH_SHOWN_MAX) if path else None]
        parts.append(shown(key, quote=False) if key else None)
        where = ": ".join(part for part in parts if part)
        super().__init__(f"{where}: {message}" if where else message)


class AlreadyRunningError(ProcguardError):
    """A second start of an instance name that is already running."""

    exit_status = ExitStatus.ALREADY_RUNNING

    def __init__(self, name: str, pid: int | None, hint: str = "") -> None:
        self.name = name
        self.pid = pid
        who = f"PID {pid}" if pid else "another process"
        msg = f"instance {shown(name)} is already running as {who}"
        if hint:
            msg += f"; {hint}"
        super().__init__(msg)


class StateDirError(ProcguardError):
    """The state directory is unsafe (symlink, foreign owner, writable by others)."""

    exit_status = ExitStatus.USAGE

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"state directory {shown(str(path), quote=False, limit=PATH_SHOWN_MAX)}: {problem}")


def report(error: ProcguardError, prog: str, *, stream: TextIO | None = None) -> int:
    """Print ``error`` as ``PROG: message`` (one line) and return its exit status."""
    (stream or sys.stderr).write(f"{prog}: {error}\n")
    return int(error.exit_status)


def exit_status_of(main: Callable[[], int | None], *, prog: str | None = None) -> int:
    """Run a worker's ``main()`` and return its exit status; a :class:`ProcguardError` is one line.

    A worker's own command line should behave like ``procguard run``: a taken
    health port, an instance that is already running or a bad limit ends the
    program with one line on stderr and the error's exit status (2 for bad
    input, 3 for "already running"), never a traceback::

        from procguard import exit_status_of

        if __name__ == "__main__":
            raise SystemExit(exit_status_of(main, prog="collector"))

    ``prog`` defaults to the program's file name, as argparse names it. Any
    other exception is the program's own bug and keeps its traceback.
    """
    try:
        status = main()
    except ProcguardError as error:
        return report(error, prog or _program_name())
    return 0 if status is None else int(status)


def _program_name() -> str:
    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
