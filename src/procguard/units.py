"""Parsing of durations, sizes and percentages as users write them.

Bare numbers keep the seed's units (the caller says which: minutes for
``--interval``, hours for ``--max-runtime``, MB for ``--memory-limit``);
suffixed values are accepted everywhere: ``90s``, ``10m``, ``24h``, ``1d``,
``512MB``, ``2GiB``. Every error names the value and what is accepted.
"""

from __future__ import annotations

import math
import re

from .errors import UsageError, shown

_NUMBER = r"(?P<num>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_DURATION_RE = re.compile(_NUMBER + r"\s*(?P<unit>[a-zA-Z]*)\Z")

DURATION_UNITS: dict[str, float] = {
    "ms": 0.001,
    "s": 1.0, "sec": 1.0, "secs": 1.0, "second": 1.0, "seconds": 1.0,
    "m": 60.0, "min": 60.0, "mins": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hr": 3600.0, "hrs": 3600.0, "hour": 3600.0, "hours": 3600.0,
    "d": 86400.0, "day": 86400.0, "days": 86400.0,
}

SIZE_UNITS: dict[str, int] = {
    "b": 1,
    "k": 1000, "kb": 1000, "kib": 1024,
    "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
    "g": 1000**3, "gb": 1000**3, "gib": 1024**3,
    "t": 1000**4, "tb": 1000**4, "tib": 1024**4,
}

#: What a bare number means for a size: the seed's "MB" is 2**20 bytes
#: (``memory_limit_mb=2048`` is 2 GiB), and so is an explicit "MB" suffix,
#: since that is how every user of the seed read it.
MB = 1024**2


def _label(what: str) -> str:
    return f"{what}: " if what else ""


def parse_duration(value: object, *, default_unit: str = "s", what: str = "") -> float:
    """Return ``value`` as seconds (float >= 0).

    ``default_unit`` is what a bare number means (``"s"``, ``"m"`` or ``"h"``).
    Accepts ints, floats and strings like ``"90s"``, ``"10m"``, ``"1.5h"``.
    """
    accepted = f"a number of {_UNIT_WORDS.get(default_unit, default_unit)} or a duration like 90s, 10m, 24h"
    if isinstance(value, bool):
        raise UsageError(f"{_label(what)}{shown(value)} is not a duration (use {accepted})")
    if isinstance(value, (int, float)):
        seconds = float(value) * DURATION_UNITS[default_unit]
    else:
        text = str(value).strip()
        match = _DURATION_RE.match(text)
        unit = match.group("unit").lower() if match else ""
        if not match or (unit and unit not in DURATION_UNITS):
            raise UsageError(f"{_label(what)}{shown(text)} is not a duration (use {accepted})")
        seconds = float(match.group("num")) * DURATION_UNITS[unit or default_unit]
    if not math.isfinite(seconds) or seconds < 0:
        raise UsageError(f"{_label(what)}{shown(value)} must be zero or positive (use {accepted})")
    return seconds


_UNIT_WORDS = {"s": "seconds", "m": "minutes", "h": "hours"}


def parse_size(value: object, *, default_unit: str = "MB", what: str = "") -> int:
    """Return ``value`` as bytes (int >= 0).

    A bare number is in ``default_unit`` (MB, meaning MiB as in the seed).
    Suffixes: B, KB/KiB, MB/MiB, GB/GiB, TB/TiB (MB and GB count in powers
    of 1024 as the seed did; KB in 1000s is the exception nobody uses).
    """
    accepted = "a number of MB or a size like 512MB, 2GiB"
    if isinstance(value, bool):
        raise UsageError(f"{_label(what)}{shown(value)} is not a size (use {accepted})")
    if isinstance(value, (int, float)):
        number, unit = float(value), default_unit.lower()
    else:
        text = str(value).strip()
        match = _DURATION_RE.match(text)
        if not match:
            raise UsageError(f"{_label(what)}{shown(text)} is not a size (use {accepted})")
        number, unit = float(match.group("num")), (match.group("unit") or default_unit).lower()
    if unit not in SIZE_UNITS:
        raise UsageError(f"{_label(what)}{shown(value)} is not a size (use {accepted})")
    factor = SIZE_UNITS[unit]
    if unit in ("m", "mb", "g", "gb", "t", "tb"):
        factor = {"m": MB, "mb": MB, "g": 1024**3, "gb": 1024**3, "t": 1024**4, "tb": 1024**4}[unit]
    size = number * factor
    if not math.isfinite(size) or size < 0:
        raise UsageError(f"{_label(what)}{shown(value)} must be zero or positive (use {accepted})")
    return int(size)


def parse_percent(value: object, *, maximum: float, what: str = "") -> float:
    """Return ``value`` as a percentage in ``[0, maximum]`` (``"80"``, ``"80%"``, ``150``)."""
    accepted = f"a number from 0 to {maximum:g}"
    text = str(value).strip().rstrip("%") if not isinstance(value, (int, float)) else value
    try:
        if isinstance(value, bool):
            raise ValueError
        percent = float(text)
    except ValueError:
        raise UsageError(f"{_label(what)}{shown(value)} is not a percentage (use {accepted})") from None
    if not math.isfinite(percent) or not 0 <= percent <= maximum:
        raise UsageError(f"{_label(what)}{shown(value)} is out of range (use {accepted})")
    return percent


def parse_count(value: object, *, what: str = "", minimum: int = 0) -> int:
    """Return ``value`` as a whole number >= ``minimum``."""
    try:
        if isinstance(value, bool):
            raise ValueError
        count = int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        msg = f"{_label(what)}{shown(value)} is not a whole number (use {minimum} or more)"
        raise UsageError(msg) from None
    if count < minimum:
        raise UsageError(f"{_label(what)}{shown(value)} is out of range (use {minimum} or more)")
    return count


def parse_port(value: object, *, what: str = "") -> int:
    """Return ``value`` as a TCP port in 0..65535 (0: disabled or "pick one", per caller)."""
    try:
        if isinstance(value, bool):
            raise ValueError
        port = int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        raise UsageError(f"{_label(what)}{shown(value)} is not a port (use 0 to 65535)") from None
    if not 0 <= port <= 65535:
        raise UsageError(f"{_label(what)}{shown(value)} is out of range (use 0 to 65535)")
    return port


def format_duration(seconds: float) -> str:
    """Short human form: ``45s``, ``12m``, ``3h``, ``1d2h``."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s" if seconds >= 1 or seconds == 0 else f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 86400:
        return f"{seconds / 3600:.1f}h".replace(".0h", "h")
    days, rest = divmod(int(seconds), 86400)
    return f"{days}d{rest // 3600}h"
