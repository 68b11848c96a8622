"""The autoscaling rule and decision, pure: an injected clock, readings as values, no process."""

from __future__ import annotations

import pytest

from procguard.autoscale import AutoscaleRule, Decision, Memory, Reading, decide, parse_rule, wanted
from procguard.errors import UsageError

RULE = AutoscaleRule(min=1, max=4, metric="queue_depth", target=100, scale_down_after_s=30, interval_s=1)


def run(readings: list[tuple[float, tuple[float | None, ...]]], start: int = 1) -> list[tuple[float, int]]:
    """Replay (time, values) readings; the counts after each change, as (time, count)."""
    current, memory, changes = start, Memory(), []
    for now, values in readings:
        decision, memory = decide(RULE, current, Reading(values), now, memory)
        if decision.change_to is not None and decision.change_to != current:
            current = decision.change_to
            changes.append((now, current))
    return changes


def test_wanted_is_hpa_ceil_of_total_over_target_within_min_max() -> None:
    assert [wanted(RULE, total) for total in (0, 1, 100, 101, 250, 400, 401, 10_000)] == [1, 1, 1, 2, 3, 4, 4, 4]


def test_scales_up_at_once_to_max_on_a_burst() -> None:
    assert run([(0, (0,)), (1, (2000,))]) == [(1, 4)]


def test_scales_down_only_after_the_want_stayed_lower_for_scale_down_after() -> None:
    readings = [(0.0, (2000.0,))] + [(float(t), (0.0, 0.0, 0.0, 0.0)) for t in range(1, 40)]
    assert run(readings) == [(0.0, 4), (30.0, 1)]  # 30 s after 4 copies were last wanted


def test_a_short_dip_does_not_scale_down_no_flapping() -> None:
    # the queue drains and refills every 20 s (less than scale_down_after): one scale-up, nothing else
    readings = [(float(t), (0.0 if (t // 10) % 2 else 400.0,) * 4) for t in range(0, 120)]
    assert run(readings, start=4) == []


def test_scale_down_goes_to_the_highest_count_wanted_within_the_window() -> None:
    readings = [(0.0, (100.0,) * 4)]  # 400: 4 wanted
    readings += [(float(t), (50.0,) * 4) for t in range(1, 10)]  # 200: 2 wanted
    readings += [(float(t), (0.0,) * 4) for t in range(10, 31)]  # 0: 1 wanted
    readings += [(float(t), (0.0,) * 2) for t in range(31, 70)]  # (after the first scale-down: 2 copies)
    # at t=30 the counts wanted since t=0 were 2 then 1: down to 2; 30 s later to 1
    assert run(readings, start=4) == [(30.0, 2), (60.0, 1)]


def test_an_unknown_copy_is_never_zero() -> None:
    # 4 copies, 3 read as 0 and one unknown: down counts it at target (100 -> 1 copy still wanted... at most 1)
    decision, _memory = decide(RULE, 4, Reading((0.0, 0.0, 0.0, None)), 0.0, Memory())
    assert decision.total == 0.0 and decision.change_to is None
    # two copies unknown, two read 90 each: scale-down would count 90+90+100+100 -> 4, no change ever
    memory = Memory()
    for t in range(0, 100):
        decision, memory = decide(RULE, 4, Reading((90.0, 90.0, None, None)), float(t), memory)
        assert decision.change_to is None
    # for scale-up an unknown copy is idle: the known ones alone can ask for more
    decision, _memory = decide(RULE, 2, Reading((350.0, None)), 0.0, Memory())
    assert decision.change_to == 4


def test_all_unknown_changes_nothing() -> None:
    memory = Memory()
    for t in range(0, 100):
        decision, memory = decide(RULE, 3, Reading((None, None, None)), float(t), memory)
        assert decision == Decision(None, None, None, "no copy could be read")


def test_a_count_outside_min_max_is_brought_back_at_once() -> None:
    decision, _memory = decide(RULE, 6, Reading((0.0,) * 6), 0.0, Memory())
    assert decision.change_to == 4  # above max (an operator's scale): back to max at once
    decision, _memory = decide(RULE._replace(min=2), 1, Reading((0.0,)), 0.0, Memory())
    assert decision.change_to == 2


def test_parse_rule_defaults_and_units() -> None:
    rule = parse_rule({"min": 1, "max": 8, "metric": "queue_depth", "target": 100, "scale_down_after": "5m"})
    assert rule == AutoscaleRule(1, 8, "queue_depth", 100.0, 300.0, 5.0)
    assert "1..8 copies on queue_depth" in rule.describe()


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"min": 3, "max": 2, "metric": "q", "target": 1}, "min: 3 is above max 2"),
        ({"min": 1, "max": 2, "metric": "q", "target": 0}, "target: 0 is not above 0"),
        ({"min": 1, "max": 2, "metric": "q", "target": -5}, "target: -5 is not above 0"),
        ({"min": 1, "max": 2, "metric": "q", "target": "many"}, "target: 'many' is not above 0"),
        ({"min": 0, "max": 2, "metric": "q", "target": 1}, "min: 0 is out of range"),
        ({"min": 1, "max": 65, "metric": "q", "target": 1}, "max: 65 is out of range"),
        ({"min": 1, "max": 2, "metric": "queue-depth", "target": 1}, "metric: 'queue-depth' is not a gauge name"),
        ({"min": 1, "max": 2, "metric": "procguard_ready", "target": 1}, "is not a gauge name"),
        ({"min": 1, "max": 2, "target": 1}, "metric: missing"),
        ({"min": 1, "max": 2, "metric": "q", "target": 1, "interval": 0}, "interval: 0 is out of range"),
        ({"min": 1, "max": 2, "metric": "q", "target": 1, "every": 1}, "every: unknown key"),
    ],
)
def test_parse_rule_refuses_bad_input_in_one_line(table: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=message) as error:
        parse_rule(table)
    assert "\n" not in str(error.value)
