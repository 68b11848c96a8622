"""Pure limit decisions: given a resource sample and the time, is a stop due?

Nothing here reads the clock, touches a process or logs: callers pass ``now``
(``time.monotonic()`` seconds) and a :class:`~procguard.sampler.ResourceSample`
(or anything with the same attributes), and get back a :class:`LimitVerdict`
or ``None``. The in-process :class:`~procguard.manager.ProcessManager`, the
runner watching a command from outside and the supervisor all share these
rules, and the unit tests drive them with made-up samples and times.

Rules (see docs/PROCESS_LIFECYCLE_MANAGEMENT.md):

- memory over the limit for ``memory_strikes`` consecutive samples ->
  graceful stop (``memory_limit``); one spike is not enough, as in circus's
  resource watcher, but the strikes are counted at the strike pace
  (:data:`STRIKE_SAMPLE_INTERVAL_S`, a fraction of a second), not once a minute.
- memory over the hard ceiling in any one sample -> immediate stop
  (``hard_memory_limit``): a worker leaking fast would cross the kernel's
  limit before a graceful stop could finish.
- CPU averaged over a full ``cpu_window_s`` window above the limit ->
  graceful stop (``cpu_limit``). No verdict before one whole window has
  passed since the start.
- runtime past the (jittered) deadline -> graceful stop (``max_runtime``).
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, NamedTuple, Protocol

from .limits import WorkerLimits
from .reasons import StopReason

if TYPE_CHECKING:
    import random

_MB = 1024 * 1024

#: How often a watcher samples a worker that holds much of its memory limit without
#: growing (a leak may start at any moment), so the approach is seen early.
NEAR_LIMIT_SAMPLE_INTERVAL_S = 0.25
#: How often a worker is sampled while its memory strikes are being counted (over the
#: limit): the strikes confirm a real breach within tens of milliseconds, not seconds.
STRIKE_SAMPLE_INTERVAL_S = 0.025
#: The fastest pace of a worker growing towards its limit: the sample that sees the
#: crossing comes at most this long after it.
APPROACH_SAMPLE_INTERVAL_S = 0.025
#: From this fraction of its memory limit on, a worker is sampled at least at the near-limit pace.
CLOSE_WATCH_FRACTION = 0.6
#: A growth rate is measured over at least this long when samples allow (see :class:`GrowthBase`).
GROWTH_SPAN_S = 0.25
#: A worker at rest (not growing, far below its limit) may be sampled less often than
#: the regular pace, but never so rarely that a leak this fast, starting just after a
#: sample, could bring it to CLOSE_WATCH_FRACTION of its limit unseen.
REST_LEAK_RATE_BYTES_S = 50 * _MB


class SampleLike(Protocol):
    """What the policy reads from a sample (``procguard.sampler.ResourceSample``)."""

    @property
    def memory_bytes(self) -> int: ...

    @property
    def cpu_percent(self) -> float: ...

    @property
    def cpu_window_s(self) -> float: ...


class LimitVerdict(NamedTuple):
    """A decision to stop: why, how (``hard``: end it now), and the figures behind it."""

    reason: StopReason
    hard: bool
    detail: str
    figures: dict[str, float]


def _mb(n: float) -> str:
    return f"{n / _MB:.1f} MB"


class LimitTracker:
    """Stateful (strike counts) but pure: feed it samples in time order.

    The in-process manager, ``procguard run`` watching a command and the
    supervisor each keep one per worker, built from the worker's
    :class:`~procguard.limits.WorkerLimits`, so a limit trips the same way
    whoever watches.

    >>> t = LimitTracker(WorkerLimits(memory_limit_bytes=100, memory_strikes=2), started_at=0.0)
    >>> class S: memory_bytes, cpu_percent, cpu_window_s = 110, 0.0, 0.0
    >>> t.observe(S(), 1.0) is None
    True
    >>> t.observe(S(), 2.0).reason.value
    'memory_limit'
    """

    def __init__(self, limits: WorkerLimits, *, started_at: float) -> None:
        self.limits = limits
        self.started_at = started_at
        self.memory_strikes = 0

    def over_soft_memory(self, sample: SampleLike) -> bool:
        """True when this one sample is above the memory limit (health turns red at once)."""
        soft = self.limits.memory_limit_bytes
        return soft is not None and sample.memory_bytes > soft

    def over_cpu(self, sample: SampleLike, now: float) -> bool:
        """True when the CPU average over a *full* window is over the limit.

        No verdict before one whole window has passed since the start: a
        start-up burst is not a sustained load.
        """
        lim = self.limits
        if not lim.cpu_limit_percent:
            return False
        if now - self.started_at < lim.cpu_window_s:
            return False
        # A window is "full" within 5% (sampling ticks never land exactly on it).
        if sample.cpu_window_s < lim.cpu_window_s * 0.95:
            return False
        return sample.cpu_percent > lim.cpu_limit_percent

    def observe(self, sample: SampleLike, now: float) -> LimitVerdict | None:
        """Account for one sample taken at ``now``; return a verdict when a limit is reached."""
        lim = self.limits
        mem = sample.memory_bytes
        hard = lim.memory_ceiling_bytes
        if hard and mem > hard:
            return LimitVerdict(
                StopReason.HARD_MEMORY_LIMIT,
                hard=True,
                detail=f"memory {_mb(mem)} over the hard ceiling {_mb(hard)}",
                figures={"memory_bytes": mem, "memory_hard_limit_bytes": hard},
            )
        if self.over_soft_memory(sample):
            self.memory_strikes += 1
            soft = lim.memory_limit_bytes or 0
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
        if rng is None:
            import random  # here: the supervisor, which never draws a jitter, stays 0.1 MB lighter

            rng = random.Random()
        jitter = rng.uniform(0.0, min(jitter_s, max_runtime_s))
    return started_at + max_runtime_s - jitter


def runtime_detail(now: float, started_at: float, deadline: float, max_runtime_s: float | None) -> str:
    """The detail of a ``max_runtime`` stop at ``now``: how long it ran, the limit, and how early the
    jitter made it (the same words from the manager, the command runner and the supervisor)."""
    limit = max_runtime_s or 0.0
    early = started_at + limit - deadline
    jitter = f", {early:.1f}s early (runtime_jitter)" if early >= 0.05 else ""
    return f"ran {now - started_at:.1f}s, max runtime {limit:g}s{jitter}"


def iteration_cap(
    max_iterations: int | None, jitter: int = 0, *, rng: random.Random | None = None
) -> int | None:
    """How many iterations this process runs before its recycle, or ``None`` (no limit).

    Like :func:`runtime_deadline`, the jitter is *subtracted* (a uniform
    whole draw in ``[0, jitter]``, never below one iteration), so
    ``max_iterations`` stays a ceiling while copies started together recycle
    apart.
    """
    if not max_iterations:
        return None
    if jitter <= 0 or max_iterations <= 1:
        return max_iterations
    if rng is None:
        import random

        rng = random.Random()
    return max_iterations - rng.randint(0, min(jitter, max_iterations - 1))


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
# A leak crossing the limit between two slow samples would be seen late and
# grow past the limit meanwhile. So the growth between samples predicts when
# the limit will be reached, and the next sample is taken halfway there: the
# samples close in on the crossing (down to APPROACH_SAMPLE_INTERVAL_S), so the
# first sample over the limit comes just after it, and the strikes are then
# counted at the strike pace. Only a worker that is growing towards its limit
# (or sits close to it) pays for this; an idle one is sampled at the regular
# pace. The in-process manager follows the same rule with its own regular pace.


def next_sample_delay(
    memory_bytes: int,
    *,
    limits: WorkerLimits,
    strikes: int,
    previous: tuple[float, int] | None,
    now: float,
    regular_s: float,
    rest_s: float | None = None,
) -> float:
    """Seconds until this worker's next sample: ``regular_s``, less near the limit, more at rest.

    ``previous`` is ``(monotonic time, memory bytes)`` of an earlier sample
    (None for a worker's first): the last one, or better the one
    :class:`GrowthBase` picks, so that growth in steps is still growth.

    - no memory limit: ``regular_s`` (``rest_s`` if given);
    - over the limit, or strikes pending: the strike pace;
    - growing: half the time the growth needs to reach the limit, no less
      than the approach pace (the samples close in on the crossing);
    - at :data:`CLOSE_WATCH_FRACTION` of the limit or more: the near-limit pace;
    - at rest (``rest_s`` given, not growing towards the limit): up to
      ``rest_s``, as long as a leak of :data:`REST_LEAK_RATE_BYTES_S` would
      still be seen before it reached :data:`CLOSE_WATCH_FRACTION` of the limit;
    - never more than twice the time since ``previous``: after fast samples the
      pace relaxes step by step (a leak growing in steps shows no growth between
      two close samples, and must not then wait a whole regular period).
    """
    soft = limits.memory_limit_bytes
    if not soft:
        return max(regular_s, rest_s or 0.0)
    if strikes > 0 or memory_bytes > soft:
        return min(regular_s, STRIKE_SAMPLE_INTERVAL_S)
    delay = regular_s
    close = soft * CLOSE_WATCH_FRACTION
    if memory_bytes >= close:
        delay = min(delay, NEAR_LIMIT_SAMPLE_INTERVAL_S)
    elif rest_s is not None and previous is not None:
        room_s = (close - memory_bytes) / REST_LEAK_RATE_BYTES_S  # a fast leak's time to close watch
        delay = max(regular_s, min(rest_s, room_s))
    if previous is None or now <= previous[0]:
        return delay
    then, before = previous
    span = now - then
    delay = min(delay, max(2 * span, APPROACH_SAMPLE_INTERVAL_S))
    growth = memory_bytes - before
    if growth > 0:
        reach_s = (soft - memory_bytes) * span / growth  # time to the limit at this growth
        delay = min(delay, max(reach_s / 2, APPROACH_SAMPLE_INTERVAL_S))
    return delay


class GrowthBase:
    """Which earlier sample a worker's growth is measured from: the newest at least
    :data:`GROWTH_SPAN_S` old (or the oldest there is).

    Why: a program that allocates in steps (a buffer every 100 ms) shows no
    growth between two samples taken 25 ms apart; measured over a quarter of a
    second it shows its real rate. Feed it every sample, in time order.

    >>> base = GrowthBase()
    >>> base.push(0.0, 100) is None
    True
    >>> base.push(0.1, 100), base.push(0.2, 150), base.push(0.3, 150)
    ((0.0, 100), (0.0, 100), (0.0, 100))
    >>> base.push(0.6, 200)
    (0.3, 150)
    """

    __slots__ = ("_points",)

    def __init__(self) -> None:
        self._points: collections.deque[tuple[float, int]] = collections.deque()

    def push(self, now: float, memory_bytes: int) -> tuple[float, int] | None:
        """Record the sample taken at ``now``; return the one to measure its growth from."""
        points = self._points
        base = None
        while points and points[0][0] <= now - GROWTH_SPAN_S:
            base = points.popleft()
        if base is not None:
            points.appendleft(base)  # the newest one old enough
        found = points[0] if points else None
        points.append((now, memory_bytes))
        return found
