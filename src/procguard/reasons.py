"""Stop reasons and exit statuses: the one table every layer agrees on.

A worker's exit status says why it stopped, so that an engine (systemd,
supervisord, ``procguard up``) can tell a *planned recycle* (max runtime,
max iterations, memory or CPU limit reached and handled gracefully) from a
crash. ``RECYCLE_STATUSES`` is what the deploy generators put into
``SuccessExitStatus=`` / ``exitcodes=``.
"""

from __future__ import annotations

import enum
import signal


class StopReason(str, enum.Enum):
    """Why a worker stopped. The string values are part of the public contract."""

    MAX_RUNTIME = "max_runtime"
    MAX_ITERATIONS = "max_iterations"
    MEMORY_LIMIT = "memory_limit"
    CPU_LIMIT = "cpu_limit"
    SIGNAL = "signal"
    HEARTBEAT_TIMEOUT = "heartbeat_timeout"
    REQUESTED = "requested"
    COMPLETED = "completed"
    ITERATION_FAILURES = "iteration_failures"

    def __str__(self) -> str:
        return self.value


class ExitStatus(enum.IntEnum):
    """Exit statuses of procguard commands and managed workers (documented in
    docs/PROCESS_LIFECYCLE_MANAGEMENT.md)."""

    OK = 0  # completed (--once), requested stop, or a command that succeeded
    ERROR = 1  # a worker crashed / a command failed at run time
    USAGE = 2  # bad input: flag, value, config
    ALREADY_RUNNING = 3  # single-instance lock refused the start
    CLEANUP_INCOMPLETE = 4  # cleanup could not stop everything (EPERM, survivors)
    # Planned recycles: the worker stopped itself gracefully at a limit.
    MAX_RUNTIME = 80
    MAX_ITERATIONS = 81
    MEMORY_LIMIT = 82
    CPU_LIMIT = 83
    # Stops that are not planned but were handled by procguard.
    HEARTBEAT_TIMEOUT = 84
    ITERATION_FAILURES = 85
    MEMORY_HARD_LIMIT = 86  # hard ceiling crossed: immediate exit, no cleanup
    GRACE_EXCEEDED = 87  # a graceful stop overran grace_s, or a second signal
    # A graceful stop after SIGTERM/SIGINT exits 128 + signal number (143, 130).

    def __str__(self) -> str:
        # The number, as on Python 3.11+; 3.10's IntEnum would print
        # "ExitStatus.MAX_RUNTIME" into generated configs and messages.
        return str(self.value)


_REASON_STATUS: dict[StopReason, int] = {
    StopReason.COMPLETED: ExitStatus.OK,
    StopReason.REQUESTED: ExitStatus.OK,
    StopReason.MAX_RUNTIME: ExitStatus.MAX_RUNTIME,
    StopReason.MAX_ITERATIONS: ExitStatus.MAX_ITERATIONS,
    StopReason.MEMORY_LIMIT: ExitStatus.MEMORY_LIMIT,
    StopReason.CPU_LIMIT: ExitStatus.CPU_LIMIT,
    StopReason.HEARTBEAT_TIMEOUT: ExitStatus.HEARTBEAT_TIMEOUT,
    StopReason.ITERATION_FAILURES: ExitStatus.ITERATION_FAILURES,
}

#: Exit statuses that mean "stopped on purpose, restart me without counting a failure".
RECYCLE_STATUSES: frozenset[int] = frozenset(
    {ExitStatus.MAX_RUNTIME, ExitStatus.MAX_ITERATIONS, ExitStatus.MEMORY_LIMIT, ExitStatus.CPU_LIMIT}
)

#: Exit statuses of a graceful stop after SIGTERM or SIGINT.
SIGNAL_STOP_STATUSES: frozenset[int] = frozenset({128 + signal.SIGTERM, 128 + signal.SIGINT})


def exit_status_for(reason: StopReason | None, signum: int | None = None) -> int:
    """Exit status for a graceful stop with ``reason`` (``signum`` for SIGNAL)."""
    if reason is None:
        return ExitStatus.OK
    if reason is StopReason.SIGNAL:
        return 128 + (signum or signal.SIGTERM)
    return int(_REASON_STATUS[reason])


def reason_for_exit_status(status: int) -> StopReason | None:
    """Inverse of :func:`exit_status_for` where it is unambiguous (used by supervisors)."""
    if status in SIGNAL_STOP_STATUSES:
        return StopReason.SIGNAL
    for reason, code in _REASON_STATUS.items():
        if code == status and code != ExitStatus.OK:
            return reason
    return None


def is_planned_recycle(status: int) -> bool:
    """True when an exit status is a planned recycle, not a failure."""
    return status in RECYCLE_STATUSES
