"""How closely to watch one worker's memory: at the regular tick, or at the fast pace near its limit.

Why this exists: the supervisor samples every worker every
``sample_interval_s`` (2 s), which keeps 50 idle workers almost free to
watch; but the memory limit is confirmed over two consecutive samples
(:class:`procguard.policy.LimitTracker`, so one spike does not recycle a
worker) and the hard ceiling is only 1.25 x the limit. At 2 s a worker
leaking 20 MB/s against 200 MB reached the ceiling (2.5 s after crossing)
before its second strike and was killed instead of recycled. The
in-process monitor samples faster once a strike is seen
(:data:`procguard.monitor.FAST_SAMPLE_DIVISOR`); a supervisor has to start
earlier, *before* the crossing, because its regular pace is slower.

The rule (a pure function, no clock read): a worker is *closely watched*,
sampled every ``fast_sample_interval_s`` (0.25 s, the runner's pace), when

- its last sample is over the soft limit, or a strike is already counted
  (the strikes then take a fraction of a second, as in the monitor);
- its last sample is at or above ``close_watch_fraction`` (60 %) of the
  limit (a leak that speeds up near the limit is still caught in time);
- its growth since the previous sample would reach the limit before the
  next regular sample (a fast leak far below the limit).

Everything else is sampled at the regular pace, so the footprint of a
stack whose workers sit well under their limits does not change.
"""

from __future__ import annotations


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
