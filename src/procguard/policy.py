"""Pure limit decisions: given a resource sample and the time, is a stop due?

Nothing here reads the clock, touches a process or logs: callers pass ``now``
(``time.monotonic()`` seconds) and a :class:`~procguard.sampler.ResourceSample`
(or anything with the same attributes), and get back a :class:`LimitVerdict`
or ``None``. The in-process :class:`~procguard.manager.ProcessManager`, the
runner watching a command from outside and the supervisor all share these
rules, and the unit tests drive them with made-up samples and times.

Rules (see docs/PROCESS_LIFECYCLE_MANAGEMENT.md):

- memory over the *soft* limit for ``memory_strikes`` consecutive samples ->
  graceful stop (``memory_limit``); one spike is not enough, as in circus's
  resource watcher, but the strikes are counted at the sampling interval
  (a fraction of a second), not once a minute.
- memory over the *hard* ceiling in any one sample -> immediate stop: a
  worker leaking fast would cross the kernel's limit before a graceful stop
  could finish.
- CPU averaged over a full ``cpu_window_s`` window above the limit, once the
  start-up grace is over -> graceful stop (``cpu_limit``). A window that is not
  yet full never counts.
- runtime past the (jittered) deadline -> graceful stop (``max_runtime``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Protocol

from .reasons import StopReason

_MB = 1024 * 1024

#: Default hard ceiling: this factor above the soft memory limit.
HARD_LIMIT_FACTOR = 1.25


class SampleLike(Protocol):
    """What the policy reads from a sample (``procguard.sampler.ResourceSample``)."""

    @property
    def memory_bytes(self) -> int: ...

    @property
    def cpu_percent(self) -> float: ...

    @property
    def cpu_window_s(self) -> float: ...


@dataclass(frozen=True)
class Limits:
    """Limits of one worker, in base units. ``None`` means "no limit"."""

    memory_soft_bytes: int | None = None
    memory_hard_bytes: int | None = None
    memory_strikes: int = 3
    cpu_limit_percent: float | None = None
    cpu_window_s: float = 60.0
    cpu_grace_s: float = 60.0

    def __post_init__(self) -> None:
        if self.memory_strikes < 1:
            msg = f"memory_strikes: {self.memory_strikes!r} is out of range (use 1 or more)"
            raise ValueError(msg)


def default_hard_limit(soft_bytes: int | None) -> int | None:
    """The hard ceiling used when none is given: ``HARD_LIMIT_FACTOR`` x soft."""
    if not soft_bytes:
        return None
    return int(soft_bytes * HARD_LIMIT_FACTOR)


@dataclass(frozen=True)
class LimitVerdict:
    """A decision to stop: why, how (``hard``: exit now), and the figures behind it."""

    reason: StopReason
    hard: bool
    detail: str
    figures: dict[str, float] = field(default_factory=dict)


def _mb(n: float) -> str:
    return f"{n / _MB:.1f} MB"


class LimitTracker:
    """Stateful (strike counts) but pure: feed it samples in time order.

    >>> t = LimitTracker(Limits(memory_soft_bytes=100, memory_strikes=2), started_at=0.0)
    >>> class S: memory_bytes, cpu_percent, cpu_window_s = 150, 0.0, 0.0
    >>> t.observe(S(), 1.0) is None
    True
    >>> t.observe(S(), 2.0).reason.value
    'memory_limit'
    """

    def __init__(self, limits: Limits, *, started_at: float) -> None:
        self.limits = limits
        self.started_at = started_at
        self.memory_strikes = 0

    def over_soft_memory(self, sample: SampleLike) -> bool:
        """True when this one sample is above the soft limit (health turns red at once)."""
        soft = self.limits.memory_soft_bytes
        return bool(soft) and sample.memory_bytes > soft  # type: ignore[operator]

    def over_cpu(self, sample: SampleLike, now: float) -> bool:
        """True when the CPU average over a *full* window, after the start-up grace, is too high."""
        lim = self.limits
        if not lim.cpu_limit_percent:
            return False
        if now - self.started_at < lim.cpu_grace_s:
            return False
        # A window is "full" within 5% (sampling ticks never land exactly on it).
        if sample.cpu_window_s < lim.cpu_window_s * 0.95:
            return False
        return sample.cpu_percent > lim.cpu_limit_percent

    def observe(self, sample: SampleLike, now: float) -> LimitVerdict | None:
        """Account for one sample taken at ``now``; return a verdict when a limit is reached."""
        lim = self.limits
        mem = sample.memory_bytes
        hard = lim.memory_hard_bytes
        if hard and mem > hard:
            return LimitVerdict(
                StopReason.MEMORY_LIMIT,
                hard=True,
                detail=f"memory {_mb(mem)} over the hard ceiling {_mb(hard)}",
                figures={"memory_bytes": mem, "memory_hard_bytes": hard},
            )
        if self.over_soft_memory(sample):
            self.memory_strikes += 1
            soft = lim.memory_soft_bytes or 0
            if self.memory_strikes >= lim.memory_strikes:
                return LimitVerdict(
                    StopReason.MEMORY_LIMIT,
                    hard=False,
                    detail=(
                        f"memory {_mb(mem)} over the limit {_mb(soft)} "
                        f"for {self.memory_strikes} consecutive samples"
                    ),
                    figures={"memory_bytes": mem, "memory_limit_bytes": soft, "strikes": self.memory_strikes},
                )
        else:
            self.memory_strikes = 0
        if self.over_cpu(sample, now):
            cpu_limit = lim.cpu_limit_percent or 0.0
            return LimitVerdict(
                StopReason.CPU_LIMIT,
                hard=False,
                detail=(
                    f"CPU {sample.cpu_percent:.1f}% averaged over {sample.cpu_window_s:.1f}s "
                    f"over the limit {cpu_limit:g}%"
                ),
                figures={
                    "cpu_percent": sample.cpu_percent,
                    "cpu_window_s": sample.cpu_window_s,
                    "cpu_limit_percent": cpu_limit,
                },
            )
        return None


def runtime_deadline(
    started_at: float,
    max_runtime_s: float | None,
    jitter_s: float = 0.0,
    *,
    rng: random.Random | None = None,
) -> float | None:
    """The monotonic time at which a worker should recycle itself, or ``None``.

    The jitter is *subtracted* (a uniform draw in ``[0, jitter_s]``), so
    ``max_runtime`` stays a ceiling while a fleet started together spreads
    its recycles over ``jitter_s`` seconds.
    """
    if not max_runtime_s:
        return None
    jitter = 0.0
    if jitter_s > 0:
        jitter = (rng or random.Random()).uniform(0.0, min(jitter_s, max_runtime_s))
    return started_at + max_runtime_s - jitter


def heartbeat_age(now: float, last_beat: float, sleep_until: float) -> float:
    """Seconds since the work loop last showed progress.

    Time spent in the manager's own ``sleep`` counts as progress up to the
    planned wake-up (``sleep_until``; 0 when not sleeping): a worker idling
    between iterations is healthy, one that overslept its wake-up (a blocked
    event loop) is not.
    """
    fresh = last_beat
    if sleep_until:
        fresh = max(fresh, min(now, sleep_until))
    return max(0.0, now - fresh)


def grace_exceeded(now: float, stop_asked_at: float | None, grace_s: float) -> bool:
    """True when a graceful stop asked at ``stop_asked_at`` has overrun ``grace_s``."""
    return stop_asked_at is not None and grace_s > 0 and now - stop_asked_at > grace_s


# -- how closely to watch -------------------------------------------------------
#
# Why: an outside watcher (the runner, the supervisor) samples a process tree
# at a regular pace that keeps idle workers almost free to watch, but the
# memory limit is confirmed over consecutive samples (one spike does not
# recycle a worker) and the hard ceiling is only a margin above the limit.
# A leak crossing the limit between two slow samples would reach the ceiling
# and be killed instead of recycled. So a worker near its limit, or growing
# towards it, is sampled at a fast pace *before* the crossing.

def needs_close_watch(
    memory_bytes: int,
    *,
    soft_bytes: int | None,
    strikes: int,
    previous: tuple[float, int] | None,
    now: float,
    horizon_s: float,
    near_fraction: float,
) -> bool:
    """True when the worker should be sampled at the fast pace until its next sample.

    ``previous`` is ``(monotonic time, memory bytes)`` of the sample before
    this one (None for a worker's first sample); ``horizon_s`` is how far
    ahead the growth is projected (the regular sampling interval).
    """
    if not soft_bytes:
        return False
    if strikes > 0 or memory_bytes > soft_bytes:
        return True
    if memory_bytes >= soft_bytes * near_fraction:
        return True
    if previous is None:
        return False
    then, before = previous
    if now <= then:
        return False
    rate = (memory_bytes - before) / (now - then)
    return rate > 0 and memory_bytes + rate * horizon_s >= soft_bytes
