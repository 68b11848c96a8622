"""The pure limit rules of procguard.policy, driven with made-up samples and times."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from procguard import policy
from procguard.limits import WorkerLimits
from procguard.policy import LimitTracker
from procguard.reasons import StopReason

MB = 1024 * 1024


def Limits(**values: object) -> WorkerLimits:
    """WorkerLimits with nothing set but ``values`` (the defaults would limit memory and CPU)."""
    base = {"memory_limit_bytes": None, "cpu_limit_percent": None}
    return WorkerLimits(**{**base, **values})  # type: ignore[arg-type]


@dataclass
class Sample:
    memory_bytes: int = 0
    cpu_percent: float = 0.0
    cpu_window_s: float = 0.0


def test_one_spike_over_the_soft_limit_is_not_enough() -> None:
    t = LimitTracker(Limits(memory_limit_bytes=100 * MB, memory_strikes=3), started_at=0)
    assert t.observe(Sample(120 * MB), 1) is None
    assert t.observe(Sample(120 * MB), 2) is None
    assert t.observe(Sample(50 * MB), 3) is None  # back under: strikes start over
    assert t.observe(Sample(120 * MB), 4) is None
    assert t.observe(Sample(120 * MB), 5) is None
    verdict = t.observe(Sample(120 * MB), 6)
    assert verdict is not None
    assert verdict.reason is StopReason.MEMORY_LIMIT and not verdict.hard
    assert verdict.figures["strikes"] == 3
    assert "120.0 MB over the limit 100.0 MB for 3 consecutive samples" in verdict.detail


def test_hard_ceiling_acts_on_one_sample() -> None:
    t = LimitTracker(Limits(memory_limit_bytes=100 * MB, memory_hard_limit_bytes=125 * MB), started_at=0)
    verdict = t.observe(Sample(126 * MB), 1)
    assert verdict is not None and verdict.hard and verdict.reason is StopReason.HARD_MEMORY_LIMIT
    assert verdict.figures == {"memory_bytes": 126 * MB, "memory_hard_limit_bytes": 125 * MB}


def test_at_the_limit_is_not_over_it() -> None:
    t = LimitTracker(Limits(memory_limit_bytes=100, memory_hard_limit_bytes=100, memory_strikes=1), started_at=0)
    assert t.observe(Sample(100), 1) is None
    assert t.observe(Sample(101), 2) is not None


def test_no_limits_never_stop() -> None:
    t = LimitTracker(Limits(), started_at=0)
    for now in range(100):
        assert t.observe(Sample(10**12, 10_000.0, 1e6), float(now)) is None


def test_default_hard_limit_is_a_margin_above_soft() -> None:
    assert Limits(memory_limit_bytes=200 * MB).memory_ceiling_bytes == 250 * MB
    assert Limits(memory_limit_bytes=200 * MB, memory_hard_limit_bytes=300 * MB).memory_ceiling_bytes == 300 * MB
    assert Limits(memory_limit_bytes=None).memory_ceiling_bytes is None


def test_a_ceiling_below_the_limit_is_refused() -> None:
    from procguard.errors import UsageError

    with pytest.raises(UsageError, match="below memory_limit"):
        Limits(memory_limit_bytes=200 * MB, memory_hard_limit_bytes=100 * MB)


def test_cpu_needs_one_full_window_since_the_start() -> None:
    lim = Limits(cpu_limit_percent=80, cpu_window_s=10)
    t = LimitTracker(lim, started_at=100)
    assert t.observe(Sample(0, 99.0, 10.0), 105) is None  # not one window since the start yet
    assert t.observe(Sample(0, 99.0, 5.0), 140) is None  # window not full yet
    assert t.observe(Sample(0, 79.0, 10.0), 140) is None  # under the limit
    verdict = t.observe(Sample(0, 99.0, 9.8), 141)  # full within 5%
    assert verdict is not None and verdict.reason is StopReason.CPU_LIMIT and not verdict.hard
    assert "99.0% averaged over 9.8s over the limit 80%" in verdict.detail


def test_memory_is_judged_before_cpu() -> None:
    lim = Limits(memory_limit_bytes=10, memory_strikes=1, cpu_limit_percent=1, cpu_window_s=1)
    verdict = LimitTracker(lim, started_at=0).observe(Sample(11, 50.0, 1.0), 5)
    assert verdict is not None and verdict.reason is StopReason.MEMORY_LIMIT


def test_strikes_must_be_positive() -> None:
    from procguard.errors import UsageError

    with pytest.raises(UsageError, match="memory_strikes"):
        WorkerLimits.from_user({"memory_strikes": 0})


def test_runtime_deadline_without_and_with_jitter() -> None:
    assert policy.runtime_deadline(10.0, None) is None
    assert policy.runtime_deadline(10.0, 0) is None
    assert policy.runtime_deadline(10.0, 3600) == 3610.0
    rng = random.Random(7)
    deadlines = [policy.runtime_deadline(0.0, 3600, 600, rng=rng) for _ in range(200)]
    assert all(d is not None and 3000 <= d <= 3600 for d in deadlines)
    assert max(deadlines) - min(deadlines) > 300  # actually spread, never past the max
    # jitter larger than the runtime never yields a deadline before the start
    assert policy.runtime_deadline(5.0, 10, 100, rng=rng) >= 5.0  # type: ignore[operator]


def test_heartbeat_age_counts_the_managers_sleep_as_progress() -> None:
    assert policy.heartbeat_age(now=100, last_beat=40, sleep_until=0) == 60
    # asleep until 130, now 100: fresh
    assert policy.heartbeat_age(now=100, last_beat=40, sleep_until=130) == 0
    # overslept the planned wake-up by 20 s (a blocked event loop): stale again
    assert policy.heartbeat_age(now=150, last_beat=40, sleep_until=130) == 20


def test_grace_exceeded() -> None:
    assert not policy.grace_exceeded(100, None, 30)
    assert not policy.grace_exceeded(100, 80, 30)
    assert policy.grace_exceeded(111, 80, 30)
    assert not policy.grace_exceeded(10_000, 80, 0)  # 0: no grace enforcement


APPROACH = policy.APPROACH_SAMPLE_INTERVAL_S


@pytest.mark.parametrize(
    ("memory_mib", "strikes", "previous", "expected"),
    [
        (10, 0, None, 2.0),  # far from the limit: the regular pace
        (10, 0, (0.0, 10), 2.0),  # idle: the regular pace
        (70, 0, None, policy.NEAR_LIMIT_SAMPLE_INTERVAL_S),  # at 70 % of it: near
        (40, 0, (0.0, 10), 1.0),  # growing 30 MiB/s: reaches it in 2 s, next sample halfway
        (40, 0, (0.0, 39), 2.0),  # growing slowly: regular
        (80, 0, (0.0, 60), 0.25),  # 20 MiB/s, 1 s away (and close): the near pace, half of 1 s would be more
        (95, 0, (0.0, 75), 0.125),  # 20 MiB/s, 0.25 s away: halfway there
        (99.9, 0, (0.0, 79.9), APPROACH),  # about to cross: the approach pace, no faster
        (50, 0, (0.95, 50), 0.1),  # sampled 50 ms ago, not growing: relaxes to twice that, not to 2 s
        (50, 0, (0.0, 60), 2.0),  # shrinking: regular
        (101, 0, (0.0, 99), policy.STRIKE_SAMPLE_INTERVAL_S),  # over it: the strikes are counted fast
        (90, 1, (0.0, 101), policy.STRIKE_SAMPLE_INTERVAL_S),  # a strike pending
    ],
)
def test_next_sample_delay(memory_mib, strikes, previous, expected) -> None:
    lim = Limits(memory_limit_bytes=100 * MB)
    prev = None if previous is None else (previous[0], int(previous[1] * MB))
    delay = policy.next_sample_delay(int(memory_mib * MB), limits=lim, strikes=strikes, previous=prev, now=1.0,
                                     regular_s=2.0)
    assert delay == pytest.approx(expected)


def _watch(leak: Callable[[float], float], *, regular_s: float, until: float = 30.0,
           limit_mib: float = 200, strikes: int = 3) -> tuple[list[float], float | None, float | None]:
    """Sample a made-up worker whose memory (MiB) at time t is ``leak(t)`` at the pace the rule sets.

    Returns the sample times, when the memory first crossed the limit (to the millisecond) and when
    the tracker's verdict came.
    """
    lim = Limits(memory_limit_bytes=int(limit_mib * MB), memory_strikes=strikes)
    tracker = LimitTracker(lim, started_at=0.0)
    base = policy.GrowthBase()
    crossed = next((i / 1000 for i in range(int(until * 1000)) if leak(i / 1000) > limit_mib), None)
    times: list[float] = []
    t = 0.0
    while t < until:
        times.append(t)
        memory = int(leak(t) * MB)
        sample = Sample(memory)
        if tracker.observe(sample, t) is not None:
            return times, crossed, t
        delay = policy.next_sample_delay(memory, limits=lim, strikes=tracker.memory_strikes,
                                         previous=base.push(t, memory), now=t, regular_s=regular_s)
        assert 0 < delay <= regular_s
        t += delay
    return times, crossed, None


@pytest.mark.parametrize("phase", [0.0, 0.37, 1.1, 1.93])
@pytest.mark.parametrize("steps_s", [0.0, 0.1])  # a smooth leak, or one 2 MB step every 100 ms
def test_a_leak_is_confirmed_within_a_tenth_of_a_second_of_the_crossing(phase: float, steps_s: float) -> None:
    """20 MB/s from 10 MB, starting at a random point of a 2 s regular pace: caught just after the crossing."""

    def leak(t: float) -> float:
        grown = max(0.0, t - phase)
        if steps_s:
            grown = (grown // steps_s) * steps_s
        return 10 + 20 * grown

    times, crossed, verdict = _watch(leak, regular_s=2.0)
    assert crossed is not None and verdict is not None
    # The first sample over the limit comes within the approach pace (a step leak: within two),
    # then two more strikes at the strike pace.
    first_over = (2 if steps_s else 1) * APPROACH
    assert verdict - crossed <= first_over + 2 * policy.STRIKE_SAMPLE_INTERVAL_S + 1e-9
    # Cheap: fast samples only in the last stretch, not all the way up.
    assert len(times) < 40, times


def test_an_idle_worker_costs_one_sample_per_regular_period() -> None:
    times, _crossed, verdict = _watch(lambda t: 12.0 + (t % 3) * 0.01, regular_s=2.0, until=60.0)
    assert verdict is None
    assert {round(b - a, 3) for a, b in itertools.pairwise(times)} == {2.0}
    assert len(times) == 30


def test_a_worker_steady_near_its_limit_is_watched_at_the_near_pace() -> None:
    times, _crossed, verdict = _watch(lambda t: 150.0, regular_s=2.0, until=10.0)
    assert verdict is None
    assert len(times) == pytest.approx(10 / policy.NEAR_LIMIT_SAMPLE_INTERVAL_S, abs=1)


def test_growth_base_measures_over_a_quarter_of_a_second() -> None:
    base = policy.GrowthBase()
    assert base.push(0.0, 1) is None
    assert base.push(0.1, 2) == (0.0, 1)  # nothing older yet: the oldest there is
    assert base.push(0.3, 3) == (0.0, 1)  # the newest at least 0.25 s old
    assert base.push(0.4, 4) == (0.1, 2)
    assert base.push(5.0, 5) == (0.4, 4)  # after a pause: the sample before it
    assert base.push(7.0, 6) == (5.0, 5)


def test_next_sample_delay_without_a_limit_is_regular() -> None:
    assert policy.next_sample_delay(10**12, limits=Limits(), strikes=0, previous=None, now=1.0, regular_s=2.0) == 2.0
