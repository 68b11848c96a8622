"""The restart decision: a pure function of the policy, the past and one exit.

Given how a worker ended and what happened before, :func:`decide` says
whether to restart it, after how long, or to give up (FATAL). No clock is
read here: the caller passes ``now`` (monotonic seconds), so tests replay a
whole crash loop in microseconds.

The rules, chosen against what the other supervisors do (systemd, Kubernetes, PM2, supervisord):

- A **planned recycle** (an outcome whose reason is one: max runtime, max
  iterations, memory or CPU limit, whoever enforced it) is restarted at once
  and is not a failure: a worker that recycles every hour never goes FATAL.
- Any other exit is a **failure** for the backoff and the start limit, except
  a clean exit (``completed`` or ``requested``, status 0) under
  ``on-failure`` or any exit under ``never``, which leave the worker stopped.
- **Backoff**: the first failure after a stable run restarts immediately (a
  one-off crash costs only Python's start-up, like a bare Popen loop); the
  next ones wait ``initial``, ``2*initial``, ... capped at ``max``. A run
  lasting ``reset_s`` or longer starts the count afresh (PM2 and Kubernetes
  do the same).
- **Start limit**: ``start_limit`` failures within ``start_limit_interval_s``
  -> FATAL, which stays until someone runs ``procguard start NAME``
  (systemd's StartLimitBurst/IntervalSec; unlike supervisord, a restarted
  stable worker is never counted against an old burst). ``start_limit = 0``
  never gives up: a flaky worker is retried forever, each retry paced by
  the backoff (at most ``max`` apart), as PM2 and Kubernetes do.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ..config import RestartPolicy, WorkerConfig
from ..outcome import StopOutcome
from ..reasons import StopReason


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


#: Outcomes that are a clean end, not a failure (``on-failure`` leaves the worker stopped).
_CLEAN = frozenset({StopReason.COMPLETED, StopReason.REQUESTED})


def decide(
    policy: Policy, record: Record, outcome: StopOutcome, runtime_s: float, now: float
) -> tuple[Decision, Record]:
    """What to do after a run of ``runtime_s`` that ended with ``outcome`` at time ``now``.

    Returns the decision and the new record.
    """
    stable = runtime_s >= policy.reset_s
    base = Record() if stable else record
    if outcome.planned:
        if policy.restart == "never":
            return Decision(Action.STOP), base
        return Decision(Action.RESTART, 0.0, counted=False), base
    clean = outcome.reason in _CLEAN and outcome.exit_status == 0
    if policy.restart == "never" or (policy.restart == "on-failure" and clean):
        return Decision(Action.STOP), base
    window_start = now - policy.start_limit_interval_s
    times = (*(t for t in record.failure_times if t > window_start), now)
    new = Record(consecutive_failures=base.consecutive_failures + 1, failure_times=times)
    if policy.start_limit and len(times) >= policy.start_limit:
        return Decision(Action.FATAL, counted=True), new
    return Decision(Action.RESTART, backoff_delay(policy, new.consecutive_failures), counted=True), new
