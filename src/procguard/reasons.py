"""Stop reasons and exit statuses: the one table every layer and every surface agrees on.

A stop has one reason token (the values of :class:`StopReason` are a public
contract: logs, ``status``, ``history``, the status page and the
supervisor's ``procguard_worker_stops_total{reason}`` all show them). This
module says, once, for each reason: the exit status of a worker that stops
for it, whether it is a *planned recycle* (restart at once, never counted as
a failure), and what it means in plain words. Converting a reason to an exit
status and back happens here and nowhere else.

``RECYCLE_STATUSES`` is what the deploy generators put into
``SuccessExitStatus=`` / ``exitcodes=``, so an engine (systemd, supervisord)
can tell a planned recycle from a crash too.
"""

from __future__ import annotations

import enum
import signal
from typing import NamedTuple


class StopReason(str, enum.Enum):
    """Why a worker stopped. The string values are part of the public contract."""

    # Decided by the worker's own procguard (ProcessManager, procguard run) or the program.
    MAX_RUNTIME = "max_runtime"
    MAX_ITERATIONS = "max_iterations"
    MEMORY_LIMIT = "memory_limit"
    CPU_LIMIT = "cpu_limit"
    SIGNAL = "signal"
    HEARTBEAT_TIMEOUT = "heartbeat_timeout"
    REQUESTED = "requested"
    COMPLETED = "completed"
    ITERATION_FAILURES = "iteration_failures"
    HARD_MEMORY_LIMIT = "hard_memory_limit"
    GRACE_EXCEEDED = "grace_exceeded"
    # Decided or seen by a supervisor (procguard up, or procguard run watching a command).
    LIVENESS = "liveness"
    STOPPED = "stopped"
    CRASHED = "crashed"
    KILLED = "killed"
    EXTERNAL_SIGNAL = "external_signal"
    SUPERVISOR_DIED = "supervisor_died"

    def __str__(self) -> str:
        return self.value


class Ender(str, enum.Enum):
    """Who ended the worker: part of every stop outcome."""

    WORKER = "worker"  # the program itself: its loop ended, it raised, it exited on its own
    PROCGUARD = "procguard"  # a limit, a failed probe, a forced stop: procguard decided
    OPERATOR = "operator"  # a person or a script through procguard (stop, down, restart)
    OUTSIDE = "outside"  # a signal procguard did not send (kill, the kernel's OOM killer)

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
    GRACE_EXCEEDED = 87  # a graceful stop overran its grace, or a second signal
    # A graceful stop after SIGTERM/SIGINT exits 128 + signal number (143, 130).

    def __str__(self) -> str:
        # The number, as on Python 3.11+; 3.10's IntEnum would print
        # "ExitStatus.MAX_RUNTIME" into generated configs and messages.
        return str(self.value)


#: A reason whose exit status is 128 + the stop signal (143 for SIGTERM).
_BY_SIGNAL = -1


class ReasonInfo(NamedTuple):
    """What one reason means: its exit status, whether it is a planned recycle, plain words.

    (A NamedTuple, not a dataclass: this module is imported by the runner and
    the supervisor, which are measured against small RSS budgets.)
    """

    status: int | None  # exit status of a worker stopping for it; _BY_SIGNAL; None: not an exit
    planned: bool  # a planned recycle: restart at once, never counted as a failure
    words: str  # what happened, for people (the status page, ``procguard history``)


S = StopReason

#: The one table: reason -> exit status, planned recycle or not, plain words.
REASONS: dict[StopReason, ReasonInfo] = {
    S.COMPLETED: ReasonInfo(ExitStatus.OK, False, "the work loop ended on its own (or --once finished)"),
    S.REQUESTED: ReasonInfo(ExitStatus.OK, False, "the program asked itself to stop"),
    S.MAX_RUNTIME: ReasonInfo(ExitStatus.MAX_RUNTIME, True, "recycled after its maximum runtime (planned)"),
    S.MAX_ITERATIONS: ReasonInfo(
        ExitStatus.MAX_ITERATIONS, True, "recycled after its maximum number of iterations (planned)"
    ),
    S.MEMORY_LIMIT: ReasonInfo(
        ExitStatus.MEMORY_LIMIT, True,
        "recycled gracefully: its memory stayed over the limit for several samples (planned)",
    ),
    S.CPU_LIMIT: ReasonInfo(
        ExitStatus.CPU_LIMIT, True, "recycled gracefully: its CPU averaged over a window was over the limit"
    ),
    S.HEARTBEAT_TIMEOUT: ReasonInfo(
        ExitStatus.HEARTBEAT_TIMEOUT, False, "its work loop stopped making progress (stuck) and was stopped"
    ),
    S.ITERATION_FAILURES: ReasonInfo(
        ExitStatus.ITERATION_FAILURES, False, "too many iterations in a row raised an exception"
    ),
    S.HARD_MEMORY_LIMIT: ReasonInfo(
        ExitStatus.MEMORY_HARD_LIMIT, False,
        "its memory crossed the hard ceiling (1.25 x the limit by default): ended at once, no cleanup",
    ),
    S.GRACE_EXCEEDED: ReasonInfo(
        ExitStatus.GRACE_EXCEEDED, False,
        "a graceful stop took longer than its grace (or a second signal came): ended at once",
    ),
    S.SIGNAL: ReasonInfo(_BY_SIGNAL, False, "stopped gracefully on SIGTERM or SIGINT"),
    S.EXTERNAL_SIGNAL: ReasonInfo(
        _BY_SIGNAL, False, "SIGTERM or SIGINT sent from outside procguard (not a clean exit)"
    ),
    S.STOPPED: ReasonInfo(
        _BY_SIGNAL, False, "stopped by an operator (procguard stop, down, restart, reload or scale)"
    ),
    S.LIVENESS: ReasonInfo(_BY_SIGNAL, False, "its /health kept failing, so the supervisor restarted it"),
    S.CRASHED: ReasonInfo(ExitStatus.ERROR, False, "exited with a failure status on its own (a crash)"),
    S.KILLED: ReasonInfo(
        _BY_SIGNAL, False,
        "killed by a signal: one procguard did not send (e.g. the kernel's OOM killer), or one an operator "
        "sent with procguard signal",
    ),
    S.SUPERVISOR_DIED: ReasonInfo(
        None, False, "the supervisor died while the worker ran; how it ended is unknown"
    ),
}

#: Normal ends besides the planned recycles (logged at INFO, the others at WARNING).
EXPECTED_REASONS: frozenset[StopReason] = frozenset({S.COMPLETED, S.REQUESTED, S.SIGNAL, S.STOPPED})

#: Exit statuses that mean "stopped on purpose, restart me without counting a failure".
RECYCLE_STATUSES: frozenset[int] = frozenset(
    int(info.status) for info in REASONS.values() if info.planned and info.status is not None
)

#: Exit statuses of a graceful stop after SIGTERM or SIGINT.
SIGNAL_STOP_STATUSES: frozenset[int] = frozenset({128 + signal.SIGTERM, 128 + signal.SIGINT})

#: Signals a graceful stop answers (a death by one of them was asked for, politely).
STOP_SIGNUMS: frozenset[int] = frozenset({signal.SIGTERM, signal.SIGINT})

#: Statuses that belong to exactly one reason (80-87), for a worker that could not report its own.
_STATUS_REASON: dict[int, StopReason] = {
    int(info.status): reason
    for reason, info in REASONS.items()
    if info.status is not None and info.status >= ExitStatus.MAX_RUNTIME
}


def exit_status_for(reason: StopReason | None, signum: int | None = None) -> int:
    """Exit status of a worker that stops for ``reason`` (``signum``: the stop signal, SIGTERM if None)."""
    if reason is None:
        return ExitStatus.OK
    status = REASONS[reason].status
    if status is None:
        msg = f"{reason} is not a way for a process to exit"
        raise ValueError(msg)
    if status == _BY_SIGNAL:
        return 128 + (signum or signal.SIGTERM)
    return int(status)


def reason_for_exit_status(status: int) -> StopReason | None:
    """The reason a procguard worker exiting with ``status`` stopped for, where only one fits (80-87)."""
    return _STATUS_REASON.get(status)


def is_planned_recycle(status: int) -> bool:
    """True when an exit status is a planned recycle, not a failure."""
    return status in RECYCLE_STATUSES


def signal_name(signum: int | None) -> str:
    """``"SIGTERM"`` for 15; ``"signal N"`` for unknown numbers."""
    if signum is None:
        return "no signal"
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def describe_status(status: int | None, signum: int | None = None) -> str:
    """What an exit status (or a death by ``signum``) means, in plain words.

    ``describe_status(86)`` -> ``"86: hard memory ceiling crossed, ended at once"``;
    ``describe_status(None, 9)`` -> ``"killed by SIGKILL"``.
    """
    if signum is not None and status is None:
        return f"killed by {signal_name(signum)}"
    if status is None:
        return "unknown"
    words = _STATUS_WORDS.get(status)
    if words is None and status > 128 and status - 128 < 65:
        words = f"128 + {signal_name(status - 128)}: ended by that signal"
    if words is None:
        words = "success" if status == 0 else "a failure status of the program itself"
    return f"{status}: {words}"


_STATUS_WORDS: dict[int, str] = {
    ExitStatus.OK: "success",
    ExitStatus.ERROR: "failed (an exception escaped, or the program failed)",
    ExitStatus.USAGE: "bad input (a flag, a value, the config)",
    ExitStatus.ALREADY_RUNNING: "another instance of this name was already running",
    ExitStatus.MAX_RUNTIME: "planned recycle at the maximum runtime",
    ExitStatus.MAX_ITERATIONS: "planned recycle at the maximum number of iterations",
    ExitStatus.MEMORY_LIMIT: "planned recycle at the memory limit",
    ExitStatus.CPU_LIMIT: "planned recycle at the CPU limit",
    ExitStatus.HEARTBEAT_TIMEOUT: "stopped: the work loop stopped heart-beating",
    ExitStatus.ITERATION_FAILURES: "stopped: too many failed iterations in a row",
    ExitStatus.MEMORY_HARD_LIMIT: "hard memory ceiling crossed, ended at once",
    ExitStatus.GRACE_EXCEEDED: "a graceful stop overran its grace (or a second signal), ended at once",
    127: "the program could not be started (not found or not executable)",
    128 + signal.SIGINT: "stopped gracefully on SIGINT",
    128 + signal.SIGTERM: "stopped gracefully on SIGTERM",
    128 + signal.SIGKILL: "killed by SIGKILL",
}
