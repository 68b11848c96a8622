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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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

    def to_metrics_json(self) -> dict[str, Any]:
        """The ``/metrics`` JSON document, exactly the documented keys."""
        remaining_hours = (
            None if self.remaining_seconds is None else round(self.remaining_seconds / 3600, 4)
        )
        return {
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


#: What a health server is given: a cheap callable returning a fresh snapshot.
SnapshotSource = Callable[[], WorkerSnapshot]
