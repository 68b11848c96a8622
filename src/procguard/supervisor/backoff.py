"""The restart decision: a pure function of the policy, the past and one exit.

Given how a worker ended and what happened before, :func:`decide` says
whether to restart it, after how long, or to give up (FATAL). No clock is
read here: the caller passes ``now`` (monotonic seconds), so tests replay a
whole crash loop in microseconds.

The rules, chosen against the field (FIELD.md, "Restart policy"):

- A **planned recycle** (exit status in :data:`procguard.reasons.RECYCLE_STATUSES`,
  or a limit the supervisor enforced itself) is restarted at once and is not
  a failure: a worker that recycles every hour never goes FATAL.
- Any other exit is a **failure** for the backoff and the start limit, except
  a clean exit (status 0) under ``on-failure`` or any exit under ``never``,
  which leave the worker stopped.
- **Backoff**: the first failure after a stable run restarts immediately (a
  one-off crash costs only Python's start-up, like a bare Popen loop); the
  next ones wait ``initial``, ``2*initial``, ... capped at ``max``. A run
  lasting ``reset_s`` or longer starts the count afresh (PM2 and Kubernetes
  do the same).
- **Start limit**: ``start_limit`` failures within ``start_limit_interval_s``
  -> FATAL, which stays until someone runs ``procguard start NAME``
  (systemd's StartLimitBurst/IntervalSec; unlike supervisord, a restarted
  stable worker is never counted against an old burst).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ..config import RestartPolicy, WorkerConfig
from ..reasons import RECYCLE_STATUSES, reason_for_exit_status


@dataclass(frozen=True)
class Policy:
    """The restart settings of one worker (from its :class:`WorkerConfig`)."""

    restart: RestartPolicy = "always"
    initial_s: float = 0.5
    max_s: float = 30.0
    reset_s: float = 60.0
    start_limit: int = 5
    start_limit_interval_s: float = 60.0

    @classmethod
    def from_worker(cls, worker: WorkerConfig) -> Policy:
        return cls(
            restart=worker.restart,
            initial_s=worker.backoff_initial_s,
            max_s=worker.backoff_max_s,
            reset_s=worker.backoff_reset_s,
            start_limit=worker.start_limit,
            start_limit_interval_s=worker.start_limit_interval_s,
        )


@dataclass(frozen=True)
class Exit:
    """How one run of a worker ended.

    ``status`` is the exit status (None when killed by a signal, then
    ``signal`` says which). ``cause`` is set when the supervisor itself
    stopped the worker (a limit it enforces, a failed liveness probe), and
    ``planned`` says whether that stop was a recycle (a limit) rather than a
    failure (liveness).
    """

    status: int | None
    signal: int | None = None
    runtime_s: float = 0.0
    cause: str | None = None
    planned: bool = False

    @property
    def is_recycle(self) -> bool:
        if self.planned:
            return True
        return self.status is not None and self.status in RECYCLE_STATUSES

    @property
    def reason(self) -> str:
        """Short words for history and status: ``max_runtime``, ``exit 1``, ``signal 9``."""
        if self.status is not None and self.status in RECYCLE_STATUSES:
            return str(reason_for_exit_status(self.status))
        if self.cause is not None:
            return self.cause
        if self.signal is not None:
            return f"signal {self.signal}"
        assert self.status is not None
        known = reason_for_exit_status(self.status)
        if known is not None:
            return str(known)
        return "exited" if self.status == 0 else f"exit {self.status}"


@dataclass(frozen=True)
class Record:
    """What the decision remembers between exits (immutable; ``decide`` returns the next)."""

    consecutive_failures: int = 0
    failure_times: tuple[float, ...] = ()


class Action(str, enum.Enum):
    RESTART = "restart"
    STOP = "stop"  # leave it stopped (policy says so)
    FATAL = "fatal"  # start limit reached

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Decision:
    action: Action
    delay_s: float = 0.0
    counted: bool = False  # counted as a failure (backoff, start limit)


def backoff_delay(policy: Policy, consecutive_failures: int) -> float:
    """Delay before the restart that follows the Nth consecutive failure (N >= 1)."""
    if consecutive_failures <= 1:
        return 0.0
    exponent = min(consecutive_failures - 2, 60)
    return float(min(policy.max_s, policy.initial_s * (2.0**exponent)))


def decide(policy: Policy, record: Record, exit_: Exit, now: float) -> tuple[Decision, Record]:
    """What to do after ``exit_`` at time ``now``; returns the decision and the new record."""
    stable = exit_.runtime_s >= policy.reset_s
    base = Record() if stable else record
    if exit_.is_recycle:
        if policy.restart == "never":
            return Decision(Action.STOP), base
        return Decision(Action.RESTART, 0.0, counted=False), base
    if policy.restart == "never" or (policy.restart == "on-failure" and exit_.status == 0):
        return Decision(Action.STOP), base
    window_start = now - policy.start_limit_interval_s
    times = (*(t for t in record.failure_times if t > window_start), now)
    new = Record(consecutive_failures=base.consecutive_failures + 1, failure_times=times)
    if len(times) >= policy.start_limit:
        return Decision(Action.FATAL, counted=True), new
    return Decision(Action.RESTART, backoff_delay(policy, new.consecutive_failures), counted=True), new
