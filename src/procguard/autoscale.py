"""Autoscaling on a gauge the workers publish: the rule (``[workers.X.autoscale]``) and the decision (pure).

The rule: read the gauge ``metric`` of every copy of a worker every
``interval``, sum it, and run ``ceil(total / target)`` copies, kept within
``[min, max]``; more at once, fewer only once the wanted count has stayed
lower for ``scale_down_after``. Kubernetes' HorizontalPodAutoscaler is the
reference (desired = ceil(current x average / target) = ceil(total /
target), with a scale-down stabilization window), so the rule ``procguard
up`` applies on one machine is the one ``procguard deploy kubernetes``
renders for a cluster.

A copy whose gauge cannot be read (starting, stopped, hung, not publishing
it yet) is *unknown*, never 0. As the HorizontalPodAutoscaler does with pods
that have no metric, an unknown copy counts as idle when deciding to scale
up (the copies that are read may ask for more on their own) and as exactly
at target when deciding to scale down (it never makes the stack look
idler than it is). When no copy can be read nothing changes.

:func:`decide` is a pure function of the rule, the copies' readings, the
time (an injected clock's) and what it remembered last time
(:class:`Memory`); the supervisor carries the decision out
(:mod:`procguard.supervisor.autoscaler`). Standard library only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple

from .copies import MAX_INSTANCES
from .errors import UsageError, shown
from .snapshot import GAUGE_NAME_ACCEPTED, GAUGE_NAME_RE, RESERVED_GAUGE_PREFIX
from .units import format_duration, parse_duration

#: How often the gauges are read by default (seconds).
DEFAULT_INTERVAL_S = 5.0
#: How long the wanted count must stay lower before copies are taken away, by default (seconds).
DEFAULT_SCALE_DOWN_AFTER_S = 300.0
#: A metric no running copy publishes for this long is named in one warning (seconds).
UNKNOWN_METRIC_WARN_AFTER_S = 60.0

#: The keys of ``[workers.X.autoscale]``, each with what it accepts (the error messages list them).
KEYS: dict[str, str] = {
    "min": f"fewest copies, a whole number from 1 to {MAX_INSTANCES}",
    "max": f"most copies, a whole number from min to {MAX_INSTANCES}",
    "metric": f"the gauge the copies publish with set_gauge ({GAUGE_NAME_ACCEPTED})",
    "target": "the metric's value one copy should carry, a number above 0",
    "scale_down_after": "how long fewer copies must be enough before they go, like 5m; default 5m",
    "interval": "how often the gauges are read, like 5s; default 5s",
}


class AutoscaleRule(NamedTuple):
    """One worker's ``[workers.X.autoscale]`` table, validated (seconds for durations)."""

    min: int
    max: int
    metric: str
    target: float
    scale_down_after_s: float = DEFAULT_SCALE_DOWN_AFTER_S
    interval_s: float = DEFAULT_INTERVAL_S

    def describe(self) -> str:
        """The rule in one line (``status``, the page, ``check``)."""
        every, down = format_duration(self.interval_s), format_duration(self.scale_down_after_s)
        return (
            f"{self.min}..{self.max} copies on {self.metric} (target {self.target:g} per copy,"
            f" every {every}, down after {down})"
        )

    def to_json(self) -> dict[str, object]:
        return {
            "min": self.min,
            "max": self.max,
            "metric": self.metric,
            "target": self.target,
            "scale_down_after_seconds": self.scale_down_after_s,
            "interval_seconds": self.interval_s,
        }


def parse_rule(table: Mapping[str, object]) -> AutoscaleRule:
    """``[workers.X.autoscale]`` as a rule; UsageError naming the key, the value and what is accepted."""
    for key in table:
        if key not in KEYS:
            msg = f"{key}: unknown key (use one of: {', '.join(KEYS)})"
            raise UsageError(msg)
    for key in ("min", "max", "metric", "target"):
        if key not in table:
            msg = f"{key}: missing (give {KEYS[key]})"
            raise UsageError(msg)
    low = _count(table["min"], "min")
    high = _count(table["max"], "max")
    if low > high:
        msg = f"min: {low} is above max {high} (use min <= max)"
        raise UsageError(msg)
    metric = table["metric"]
    if not isinstance(metric, str) or not GAUGE_NAME_RE.match(metric) or metric.startswith(
        RESERVED_GAUGE_PREFIX
    ):
        msg = f"metric: {shown(metric)} is not a gauge name (use {GAUGE_NAME_ACCEPTED}, not procguard_*)"
        raise UsageError(msg)
    target = table["target"]
    if isinstance(target, bool) or not isinstance(target, int | float) or not math.isfinite(target) or (
        target <= 0
    ):
        msg = f"target: {shown(target)} is not above 0 (use {KEYS['target']})"
        raise UsageError(msg)
    down = _duration(
        table.get("scale_down_after", DEFAULT_SCALE_DOWN_AFTER_S), "scale_down_after", minimum=0.0
    )
    interval = _duration(table.get("interval", DEFAULT_INTERVAL_S), "interval", minimum=None)
    return AutoscaleRule(low, high, metric, float(target), down, interval)


def _count(value: object, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_INSTANCES:
        msg = f"{key}: {shown(value)} is out of range (use {KEYS[key]})"
        raise UsageError(msg)
    return value


def _duration(value: object, key: str, *, minimum: float | None) -> float:
    seconds = parse_duration(value, what=key)
    if (minimum is None and seconds <= 0) or (minimum is not None and seconds < minimum):
        msg = f"{key}: {shown(value)} is out of range (use {KEYS[key]})"
        raise UsageError(msg)
    return seconds


# -- the decision ---------------------------------------------------------------------------------


class Reading(NamedTuple):
    """The metric of every copy at one instant: a number, or None when that copy cannot be read."""

    values: tuple[float | None, ...]

    @property
    def known(self) -> tuple[float, ...]:
        return tuple(v for v in self.values if v is not None)

    @property
    def total(self) -> float | None:
        """The sum over the copies read (None when none could be)."""
        known = self.known
        return math.fsum(known) if known else None

    @property
    def unknown(self) -> int:
        return sum(1 for v in self.values if v is None)


class Memory(NamedTuple):
    """What :func:`decide` keeps between two readings (start with ``Memory()``).

    ``enough_since``: the last time the current count was wanted (or set);
    ``recent``: the counts wanted within the last ``scale_down_after``
    (time, count), of which the highest is where a scale-down goes.
    """

    enough_since: float | None = None
    recent: tuple[tuple[float, int], ...] = ()


class Decision(NamedTuple):
    """``change_to``: the new count (None: keep it); ``want``: what the reading asks for (None: unknown)."""

    change_to: int | None
    want: int | None
    total: float | None
    why: str


def wanted(rule: AutoscaleRule, total: float) -> int:
    """``ceil(total / target)`` kept within ``[min, max]``."""
    return max(rule.min, min(rule.max, math.ceil(total / rule.target - 1e-9)))


def decide(
    rule: AutoscaleRule, current: int, reading: Reading, now: float, memory: Memory
) -> tuple[Decision, Memory]:
    """The count the worker should have now, and what to remember for next time.

    Up at once to what the reading wants; down only when every count wanted
    within the last ``scale_down_after`` is below ``current`` and the
    current count has not been wanted for that long, and then to the
    highest of them (the HorizontalPodAutoscaler's stabilization window).
    Outside ``[min, max]`` (an operator's ``procguard scale``) the count
    is brought back within at once.
    """
    enough_since = now if memory.enough_since is None else memory.enough_since
    total = reading.total
    if total is None:
        return Decision(None, None, None, "no copy could be read"), memory._replace(enough_since=enough_since)
    up_total = total  # unknown copies: idle
    down_total = total + reading.unknown * rule.target  # unknown copies: at target
    want_up, want_down = wanted(rule, up_total), wanted(rule, down_total)
    want = want_up if want_up > current else min(want_down, max(current, rule.min))
    window = rule.scale_down_after_s
    recent = (*(r for r in memory.recent if r[0] > now - window), (now, want))
    if want > current or current < rule.min:
        target = max(want, rule.min)
        return (
            Decision(target, want, total, f"{rule.metric} {total:g} wants {want}"),
            Memory(now, ((now, target),)),
        )
    if want >= current:
        return Decision(None, want, total, "enough"), Memory(now, recent)
    if current > rule.max:
        return Decision(rule.max, want, total, f"above max {rule.max}"), Memory(now, ((now, rule.max),))
    if now - enough_since < window:
        waiting = f"fewer wanted for {now - enough_since:.0f} s"
        return Decision(None, want, total, waiting), Memory(enough_since, recent)
    target = max(count for _when, count in recent)
    if target >= current:
        return Decision(None, want, total, "enough"), Memory(enough_since, recent)
    return (
        Decision(target, want, total, f"{rule.metric} {total:g} wanted at most {target} for {window:g} s"),
        Memory(now, ((now, target),)),
    )

