"""The numbers a worker exposes, as one immutable value.

``WorkerSnapshot`` is produced by whoever watches a worker — the in-process
:class:`~procguard.manager.ProcessManager`, or the runner/supervisor watching
a child from outside — and rendered by the health server as the ``/metrics``
JSON (docs/HEALTH.md) or as Prometheus text. Keeping it a plain value
means the HTTP layer never reaches into the worker's internals, and a
snapshot can be copied to another thread or process as it is.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

HEALTHY = "healthy"

#: The worker's name in procguard.toml and its stack's name, set by ``procguard up`` and by
#: the generated production files, so every endpoint labels its series the same way.
WORKER_ENV = "PROCGUARD_WORKER"
STACK_ENV = "PROCGUARD_STACK"


def label_environment(stack: str, worker: str) -> dict[str, str]:
    """The environment that labels a worker's series; ``procguard up`` and every generated file set it."""
    return {WORKER_ENV: worker, STACK_ENV: stack}


def metric_labels(name: str) -> tuple[str, str | None]:
    """``(worker, stack)`` labels for a worker whose own name is ``name``.

    The worker label is the name in procguard.toml when procguard started the
    worker for a stack (``PROCGUARD_WORKER``), else ``name``; the stack label
    is the project name (``PROCGUARD_STACK``), None outside a stack.
    """
    worker = os.environ.get(WORKER_ENV) or name
    return worker, os.environ.get(STACK_ENV) or None


@dataclass(frozen=True)
class HealthStatus:
    """A yes/no with the reason a person can act on (``"healthy"`` when fine)."""

    is_healthy: bool
    reason: str = HEALTHY

    def to_json(self) -> dict[str, Any]:
        return {"is_healthy": self.is_healthy, "reason": self.reason}


#: What a gauge of the program's own may be called: a Prometheus metric name.
GAUGE_NAME_RE = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*\Z")
GAUGE_NAME_ACCEPTED = "letters, digits, _ and :, not starting with a digit, like queue_depth"
#: Gauge names procguard's own families use: a program's gauge may not take one.
RESERVED_GAUGE_PREFIX = "procguard_"


#: ``procguard_circuit_state``'s value for each circuit state token.
CIRCUIT_STATE_VALUES = {"closed": 0, "half-open": 1, "open": 2}


class CircuitSnapshot(NamedTuple):
    """One circuit breaker of the worker at one instant (:mod:`procguard.circuit`).

    ``state`` is ``closed``, ``half-open`` or ``open``; the counts are calls
    since the worker started: let through and returned (``successes``),
    let through and raised (``failures``), refused without calling
    (``rejected``). ``retry_in_seconds``: while open, the time until a trial
    call is let through (else None).
    """

    name: str
    state: str
    required: bool = False
    successes: int = 0
    failures: int = 0
    rejected: int = 0
    failures_in_a_row: int = 0
    retry_in_seconds: float | None = None
    last_failure: str = ""

    @property
    def closed(self) -> bool:
        return self.state == "closed"

    def describe(self) -> str:
        """One phrase for /health's and /ready's reason: which circuit, why, and when it tries again."""
        if self.state == "half-open":
            return f"circuit {self.name!r} half-open: a trial call is running"
        last = f" (last: {self.last_failure})" if self.last_failure else ""
        if self.retry_in_seconds is None or self.retry_in_seconds <= 0:
            when = "the next call is a trial"
        else:
            when = f"next trial call in {self.retry_in_seconds:.1f} s"
        return f"circuit {self.name!r} open after {self.failures_in_a_row} failures in a row{last}; {when}"

    def to_json(self) -> dict[str, Any]:
        """The circuit's object in the ``/metrics`` JSON."""
        return {
            "name": self.name,
            "state": self.state,
            "required": self.required,
            "calls": {"success": self.successes, "failure": self.failures, "rejected": self.rejected},
            "failures_in_a_row": self.failures_in_a_row,
            "retry_in_seconds": None if self.retry_in_seconds is None else round(self.retry_in_seconds, 3),
            "last_failure": self.last_failure,
        }


def circuits_health(circuits: tuple[CircuitSnapshot, ...]) -> str | None:
    """/health's reason while a circuit is not closed (the worker stays healthy), else None."""
    troubled = [c.describe() for c in circuits if not c.closed]
    return "degraded: " + "; ".join(troubled) if troubled else None


def circuits_readiness(circuits: tuple[CircuitSnapshot, ...]) -> str | None:
    """/ready's reason while a ``required`` circuit is not closed (the worker is not ready), else None."""
    troubled = [c.describe() for c in circuits if c.required and not c.closed]
    return "required " + "; required ".join(troubled) if troubled else None


@dataclass(frozen=True)
class WorkerSnapshot:
    """Everything /health, /ready and /metrics need, taken at one instant.

    Sizes are bytes, durations seconds, CPU in percent of one core (100 = one
    core busy). ``None`` means "not applicable" (no limit, no heartbeat yet).
    """

    name: str  # the ``worker`` label
    pid: int
    health: HealthStatus
    ready: HealthStatus
    stack: str | None = None  # the ``stack`` label (None: no stack)
    started: bool = True
    stopping: bool = False
    start_time_seconds: float | None = None  # Unix time the worker process started
    uptime_seconds: float = 0.0
    cpu_percent: float = 0.0
    memory_bytes: int = 0
    memory_percent: float = 0.0
    num_threads: int = 0
    num_children: int = 0
    heartbeat_age_seconds: float | None = None
    iterations: int = 0
    failed_iterations: int = 0
    max_iterations: int | None = None
    max_runtime_seconds: float | None = None
    remaining_seconds: float | None = None
    memory_limit_bytes: int | None = None
    cpu_limit_percent: float | None = None
    stop_reason: str | None = None
    #: The worker's circuit breakers (none: the ``circuits`` key is left out of the JSON).
    circuits: tuple[CircuitSnapshot, ...] = ()
    #: The program's own gauges (``ProcessManager.set_gauge``), ``(name, value)`` in the order first set.
    gauges: tuple[tuple[str, float], ...] = ()
    #: Which copy of its worker this process is (``X:K`` under ``procguard up``), None outside copies.
    copy: int | None = None

    def gauge(self, name: str) -> float | None:
        """The value of the program's gauge ``name``, None when it never set it."""
        for gauge_name, value in self.gauges:
            if gauge_name == name:
                return value
        return None

    def to_metrics_json(self) -> dict[str, Any]:
        """The ``/metrics`` JSON document, exactly the documented keys."""
        remaining_hours = (
            None if self.remaining_seconds is None else round(self.remaining_seconds / 3600, 4)
        )
        doc: dict[str, Any] = {
            "metrics": {
                "pid": self.pid,
                "uptime_seconds": round(self.uptime_seconds, 3),
                "cpu_percent": round(self.cpu_percent, 1),
                "memory_mb": round(self.memory_bytes / (1024 * 1024), 1),
                "memory_percent": round(self.memory_percent, 2),
                "num_threads": self.num_threads,
                "heartbeat_age_seconds": (
                    None
                    if self.heartbeat_age_seconds is None
                    else round(self.heartbeat_age_seconds, 3)
                ),
            },
            "health": self.health.to_json(),
            "runtime": {
                "uptime_hours": round(self.uptime_seconds / 3600, 4),
                "remaining_hours": remaining_hours,
            },
        }
        if self.circuits:
            doc["circuits"] = [circuit.to_json() for circuit in self.circuits]
        if self.gauges:
            doc["gauges"] = dict(self.gauges)
        return doc


#: What a health server is given: a cheap callable returning a fresh snapshot.
SnapshotSource = Callable[[], WorkerSnapshot]
