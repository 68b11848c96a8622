"""The procguard exception tree.

Every error a user can cause derives from :class:`ProcguardError` and carries
the fields that explain it; the CLI prints ``str(error)`` as one line and exits
with ``error.exit_status`` — never a traceback.
"""

from __future__ import annotations

from .reasons import ExitStatus


class ProcguardError(Exception):
    """Base class for every procguard error."""

    exit_status: int = ExitStatus.ERROR


class UsageError(ProcguardError, ValueError):
    """Bad input from the user: a flag, a value, a config key. Exit status 2.

    The message names the bad value and what is accepted, e.g.
    ``--memory-limit: '12XB' is not a size (use a number of MB or 512MB, 2GiB)``.
    """

    exit_status = ExitStatus.USAGE


class ConfigError(UsageError):
    """A mistake in procguard.toml; the message names file and key."""

    def __init__(self, message: str, *, path: str | None = None, key: str | None = None) -> None:
        self.path = path
        self.key = key
        where = ": ".join(part for part in (path, key) if part)
        super().__init__(f"{where}: {message}" if where else message)


class AlreadyRunningError(ProcguardError):
    """A second start of an instance name that is already running."""

    exit_status = ExitStatus.ALREADY_RUNNING

    def __init__(self, name: str, pid: int | None, hint: str = "") -> None:
        self.name = name
        self.pid = pid
        who = f"PID {pid}" if pid else "another process"
        msg = f"instance {name!r} is already running as {who}"
        if hint:
            msg += f"; {hint}"
        super().__init__(msg)


class StateDirError(ProcguardError):
    """The state directory is unsafe (symlink, foreign owner, writable by others)."""

    exit_status = ExitStatus.USAGE

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"state directory {path}: {problem}")
