"""The supervisor's own knobs (not a worker's): periods, probe thresholds, the watchdog.

Defaults suit a real stack; tests and benchmarks shorten the periods through
``PROCGUARD_SUPERVISOR_TUNING`` (read once, when ``procguard up`` starts).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from ..errors import UsageError

TUNING_ENV = "PROCGUARD_SUPERVISOR_TUNING"


@dataclass(frozen=True)
class Settings:
    """Knobs of the supervisor itself (not of a worker); tests shorten them."""

    start_period_s: float = 1.0  # alive this long after spawn -> RUNNING
    # memory/CPU sampling of every worker; one growing towards its memory limit (or
    # near it) is sampled faster, so the crossing is seen within tens of milliseconds,
    # and one at rest with much room below its limit only every rest_sample_periods
    # sampling periods (procguard.policy.next_sample_delay).
    sample_interval_s: float = 2.0
    rest_sample_periods: int = 5
    fast_sample_interval_s: float = 0.25  # a worker being stopped (watching for the hard ceiling)
    probe_delay_s: float = 10.0  # first health probe this long after spawn
    probe_period_s: float = 5.0
    probe_timeout_s: float = 2.0
    probe_failure_threshold: int = 3  # consecutive failures -> restart
    orphan_grace_s: float = 2.0  # leftover group members: TERM, then KILL after this
    # an autoscale metric no running copy publishes for this long is named in one warning
    autoscale_missing_warn_s: float = 60.0
    watchdog: bool = True

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Defaults, overridden by ``PROCGUARD_SUPERVISOR_TUNING="sample_interval_s=0.5,..."``.

        Meant for tests and benchmarks (shorter periods); a bad entry is a UsageError.
        """
        text = (os.environ if environ is None else environ).get(TUNING_ENV, "").strip()
        if not text:
            return cls()
        values: dict[str, Any] = {}
        known = {f.name: f.type for f in fields(cls)}
        for item in text.split(","):
            key, _, value = item.partition("=")
            key = key.strip()
            if key not in known:
                msg = f"{TUNING_ENV}: unknown setting {key!r} (use one of: {', '.join(known)})"
                raise UsageError(msg)
            try:
                values[key] = (
                    value.strip().lower() in ("1", "true", "yes")
                    if key == "watchdog"
                    else int(value)
                    if key in ("probe_failure_threshold", "rest_sample_periods")
                    else float(value)
                )
            except ValueError:
                msg = f"{TUNING_ENV}: {key}={value!r} is not a number"
                raise UsageError(msg) from None
        return cls(**values)

    @property
    def rest_sample_interval_s(self) -> float:
        """The longest time between two samples of a worker (one at rest, with much room)."""
        return self.sample_interval_s * max(1, self.rest_sample_periods)
