"""What the status page and the supervisor's ``/metrics`` show: an immutable view, built pure.

The event loop builds a new :class:`View` after each change (at most every
``PUBLISH_INTERVAL_S``) and swaps it in as a whole; the status server thread
only ever reads the latest one, so it never sees a worker half-updated and
never takes a lock the loop could wait on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .function_health import port_verdict
from .states import WorkerState
from .worker import Worker


@dataclass(frozen=True)
class WorkerFigures:
    """What the supervisor knows of one worker, for its Prometheus families.

    Counted by the supervisor, so they survive the worker's restarts. ``None``
    is "not known" (no process, not sampled yet, no limit, never probed): the
    family then has no sample for the worker, never a placeholder 0.
    ``name`` is the worker's name in procguard.toml, ``copy`` the copy's number
    ("" for a worker that runs under its plain name: no copies).
    """

    name: str
    state: WorkerState
    restarts: int
    stops: Mapping[str, int]
    cpu_seconds_total: float
    memory_bytes: int | None = None
    start_time_seconds: float | None = None
    memory_limit_bytes: int | None = None
    healthy: bool | None = None
    copy: str = ""

    @property
    def up(self) -> bool:
        return self.state.has_process


@dataclass
class View:
    """What the status server shows; replaced as a whole, never mutated."""

    project: str
    supervisor_pid: int
    workers: list[dict[str, Any]] = field(default_factory=list)
    figures: list[WorkerFigures] = field(default_factory=list)


def build_view(project: str, supervisor_pid: int, workers: Iterable[Worker], now: float, wall: float) -> View:
    """The ``/api/workers`` objects (``status --json`` plus recent samples) and the metric figures."""
    statuses: list[dict[str, Any]] = []
    figures: list[WorkerFigures] = []
    for worker in workers:
        status = worker.status(now)
        status["samples"] = samples = list(worker.samples)
        oldest = samples[0][0] if samples else None
        status["run_starts"] = [t for t in worker.run_starts if oldest is not None and t > oldest]
        statuses.append(status)
        figures.append(worker_figures(worker, now, wall))
    return View(project=project, supervisor_pid=supervisor_pid, workers=statuses, figures=figures)


def worker_figures(worker: Worker, now: float, wall: float) -> WorkerFigures:
    """One worker's figures; what is not known stays None."""
    running = worker.state.has_process
    sample = worker.last_sample if running else None
    start_time = None
    if running and worker.started_at is not None:
        start_time = wall - (now - worker.started_at)
    healthy = None
    if running and worker.holds_health_port:
        healthy = port_verdict(worker, now, wall)[0]  # what its port answers (the supervisor serves it)
    return WorkerFigures(
        name=worker.group,
        copy="" if worker.name == worker.group else str(worker.index),
        state=worker.state,
        restarts=worker.restarts,
        stops=dict(worker.stops_total),
        cpu_seconds_total=worker.cpu_seconds_total,
        memory_bytes=None if sample is None else sample.memory_bytes,
        start_time_seconds=start_time,
        memory_limit_bytes=worker.config.limits.memory_limit_bytes,
        healthy=healthy,
    )
