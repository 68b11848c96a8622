"""What the status page shows: an immutable view built from the workers, pure.

The event loop builds a new :class:`View` after each change (at most every
``PUBLISH_INTERVAL_S``) and swaps it in as a whole; the status server thread
only ever reads the latest one, so it never sees a worker half-updated and
never takes a lock the loop could wait on.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..snapshot import HealthStatus, WorkerSnapshot
from .states import WorkerState
from .worker import Worker

S = WorkerState


@dataclass
class View:
    """What the status server shows; replaced as a whole, never mutated."""

    project: str
    supervisor_pid: int
    workers: list[dict[str, Any]] = field(default_factory=list)
    snapshots: list[WorkerSnapshot] = field(default_factory=list)


def build_view(project: str, supervisor_pid: int, workers: Iterable[Worker], now: float) -> View:
    """The ``/api/workers`` objects (``status --json`` plus recent samples) and the metric snapshots."""
    statuses: list[dict[str, Any]] = []
    snapshots: list[WorkerSnapshot] = []
    for worker in workers:
        status = worker.status(now)
        status["samples"] = list(worker.samples)
        statuses.append(status)
        snapshots.append(worker_snapshot(worker, now))
    return View(project=project, supervisor_pid=supervisor_pid, workers=statuses, snapshots=snapshots)


def worker_snapshot(worker: Worker, now: float) -> WorkerSnapshot:
    """One worker as the shared :class:`WorkerSnapshot` the Prometheus exposition renders."""
    sample = worker.last_sample if worker.state.has_process else None
    running = worker.state in (S.STARTING, S.RUNNING)
    healthy = running and worker.probe_failures == 0
    reason = "healthy" if healthy else (worker.probe_detail or str(worker.state))
    return WorkerSnapshot(
        name=worker.name,
        pid=worker.pid or 0,
        health=HealthStatus(healthy, reason if not healthy else "healthy"),
        ready=HealthStatus(worker.state is S.RUNNING, str(worker.state)),
        started=worker.state.has_process,
        stopping=worker.state is S.STOPPING,
        uptime_seconds=worker.uptime(now) or 0.0,
        cpu_percent=0.0 if sample is None else sample.cpu_percent,
        memory_bytes=0 if sample is None else sample.memory_bytes,
        num_children=0 if sample is None else max(0, sample.num_processes - 1),
        memory_limit_bytes=worker.config.memory_limit_bytes,
        cpu_limit_percent=worker.config.cpu_limit_percent,
        max_runtime_seconds=worker.config.max_runtime_s,
        stop_reason=None if worker.last_exit is None else str(worker.last_exit.get("reason")),
        stop_reasons_total={},
    )
