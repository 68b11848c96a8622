"""Parsing of durations, sizes, percentages and ports as users write them."""

from __future__ import annotations

import pytest

from procguard.errors import UsageError
from procguard.reasons import (
    StopReason,
    exit_status_for,
    is_planned_recycle,
    reason_for_exit_status,
)
from procguard.units import (
    format_duration,
    parse_count,
    parse_duration,
    parse_percent,
    parse_port,
    parse_size,
)


@pytest.mark.parametrize(
    ("value", "unit", "seconds"),
    [(10, "m", 600), ("10", "m", 600), ("90s", "m", 90), ("24h", "s", 86400), ("1.5h", "s", 5400),
     ("0", "h", 0), ("250ms", "s", 0.25), ("2d", "h", 172800), (0.5, "h", 1800)],
)
def test_parse_duration(value: object, unit: str, seconds: float) -> None:
    assert parse_duration(value, default_unit=unit) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["-1", "abc", "10x", "", "1e3", True, float("inf"), -5])
def test_parse_duration_rejects_with_the_value_named(value: object) -> None:
    with pytest.raises(UsageError) as info:
        parse_duration(value, default_unit="m", what="--interval")
    assert str(info.value).startswith("--interval: ")
    assert "minutes" in str(info.value)


@pytest.mark.parametrize(
    ("value", "size"),
    [(2048, 2048 * 1024**2), ("512MB", 512 * 1024**2), ("2GiB", 2 * 1024**3), ("2GB", 2 * 1024**3),
     ("100", 100 * 1024**2), ("1kb", 1000), ("64KiB", 65536), ("0", 0)],
)
def test_parse_size(value: object, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize("value", ["12XB", "-5", "lots", "", False])
def test_parse_size_rejects(value: object) -> None:
    with pytest.raises(UsageError, match=r"--memory-limit: .* is not a size|must be zero"):
        parse_size(value, what="--memory-limit")


def test_percent_count_port() -> None:
    assert parse_percent("80%", maximum=200) == 80
    assert parse_percent(150, maximum=200) == 150
    with pytest.raises(UsageError, match="0 to 200"):
        parse_percent(201, maximum=200, what="--cpu-limit")
    assert parse_count("3") == 3
    with pytest.raises(UsageError, match="whole number"):
        parse_count("3.5", what="--max-iterations")
    assert parse_port("9091") == 9091
    with pytest.raises(UsageError, match="0 to 65535"):
        parse_port(70000, what="--health-port")


def test_format_duration() -> None:
    assert format_duration(45) == "45s"
    assert format_duration(600) == "10m"
    assert format_duration(7200) == "2h"
    assert format_duration(90000) == "1d1h"


def test_exit_status_table_round_trips() -> None:
    """Each status of 80 and up belongs to one reason; the others (0, 1, 128 + N) to several."""
    for reason in StopReason:
        if reason is StopReason.SUPERVISOR_DIED:
            continue  # a history row, never an exit
        status = exit_status_for(reason, 15)
        if 80 <= status < 128:
            assert reason_for_exit_status(status) is reason
        else:
            assert reason_for_exit_status(status) is None
    assert exit_status_for(StopReason.SIGNAL, 2) == 130
    assert exit_status_for(StopReason.HARD_MEMORY_LIMIT) == 86
    assert exit_status_for(StopReason.GRACE_EXCEEDED) == 87
    assert exit_status_for(StopReason.CRASHED) == 1
    assert is_planned_recycle(exit_status_for(StopReason.MAX_RUNTIME))
    assert not is_planned_recycle(exit_status_for(StopReason.HEARTBEAT_TIMEOUT))
    assert not is_planned_recycle(1)
