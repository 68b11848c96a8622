"""Pure statistics and number formatting for the head-to-head tables."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Summary:
    """Median and range of repeated measurements (``n`` = how many)."""

    median: float
    low: float
    high: float
    n: int

    def to_dict(self) -> dict[str, float]:
        return {"median": self.median, "low": self.low, "high": self.high, "n": self.n}

    @classmethod
    def from_dict(cls, data: dict[str, float]) -> Summary:
        return cls(float(data["median"]), float(data["low"]), float(data["high"]), int(data["n"]))


def summarize(values: Sequence[float]) -> Summary | None:
    """Median, min and max of ``values``; None when there is nothing to summarize."""
    clean = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not clean:
        return None
    return Summary(statistics.median(clean), min(clean), max(clean), len(clean))


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation; values must not be empty."""
    if not values:
        msg = "percentile of no values"
        raise ValueError(msg)
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q / 100.0
    lower = math.floor(pos)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (pos - lower)


def ratio(value: float | None, reference: float | None) -> float | None:
    """``value / reference``; None if either is missing or the reference is zero."""
    if value is None or reference is None or reference == 0:
        return None
    return value / reference


def fmt_ratio(value: float | None) -> str:
    """``2.3x``, ``0.45x``, ``1.0x``; an em dash when undefined."""
    if value is None:
        return "—"
    if value >= 10:
        return f"{value:.0f}x"
    if value >= 0.995:
        return f"{value:.1f}x"
    return f"{value:.2f}x"


def fmt_seconds(seconds: float) -> str:
    """Seconds in the unit a reader expects: ``18 ms``, ``1.03 s``, ``42 s``."""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 10:
        return f"{seconds:.2f} s"
    return f"{seconds:.0f} s"


def fmt_bytes(n: float) -> str:
    """Bytes as MB (MiB) or GB (GiB), the units process managers print."""
    mib = n / (1024 * 1024)
    if mib >= 1024:
        return f"{mib / 1024:.2f} GB"
    if mib >= 100:
        return f"{mib:.0f} MB"
    return f"{mib:.1f} MB"


def fmt_summary(summary: Summary | None, unit: str) -> str:
    """``1.03 s (0.98-1.10)`` / ``25.3 MB`` (range omitted for one value or a flat range)."""
    if summary is None:
        return "—"
    fmt = {"s": fmt_seconds, "bytes": fmt_bytes, "pct": lambda v: f"{v:.2f} %",
           "count": lambda v: f"{v:g}"}[unit]
    text = fmt(summary.median)
    low, high = fmt(summary.low), fmt(summary.high)
    if summary.n > 1 and low != high:
        text += f" ({low}-{high})"
    return text
