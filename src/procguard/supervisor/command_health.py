"""What a command worker's health port answers under ``procguard up``: built from the supervisor's facts.

A ``command =`` worker is a program that knows nothing of procguard, so its
/health, /ready and /metrics are procguard's view of it, the same view a
standalone ``procguard run -- COMMAND`` serves (:mod:`procguard.runner.command`):

- healthy: its process runs (starting or running), it is not being
  stopped, and the last sample of its tree is within its memory limit and,
  over a full window, its CPU limit;
- ready: its process runs and no stop (drain included) is under way;
- metrics: the supervisor's latest sample of the worker's own process tree
  (procguard's helpers left out), with the worker's limits and its labels
  (``worker`` = its name in procguard.toml, ``stack`` = the project).

Under ``procguard up`` the supervisor answers these itself
(:mod:`.healthports`) from the facts its event loop keeps on the
:class:`~.worker.Worker`: no runner process per command worker. The
functions here only read those facts (each one an attribute the loop swaps
whole), so the serving thread never waits for the loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..policy import LimitTracker
from ..procstat import read_stat, total_memory
from ..snapshot import HEALTHY, HealthStatus, WorkerSnapshot
from .procscan import LimitSample
from .states import WorkerState

if TYPE_CHECKING:
    from .worker import Worker

S = WorkerState

_MB = 1024 * 1024
_READY = HealthStatus(True, "ready")

_TOTAL_MEMORY = total_memory()


def command_health(worker: Worker, now: float) -> HealthStatus:
    """Healthy = running, not stopping, and the last sample within the worker's limits."""
    state = worker.state
    if state is S.BACKOFF:
        start_at = worker.next_start_at
        when = "" if start_at is None else f", restarting in {max(0.0, start_at - now):.1f} s"
        return HealthStatus(False, f"not running (backoff{when})")
    if not state.has_process:
        return HealthStatus(False, "not running")
    if state is S.STOPPING:
        asked = worker.asked
        link = worker.link
        decided = asked if asked is not None else (link.stopping if link is not None else None)
        return HealthStatus(False, "stopping" if decided is None else f"stopping: {decided.reason}")
    sample = worker.last_sample
    started_at = worker.started_at
    if sample is None or started_at is None:
        return HealthStatus(True, HEALTHY)
    tracker = LimitTracker(worker.config.limits, started_at=started_at)
    limit_view = LimitSample(sample)
    if tracker.over_soft_memory(limit_view):
        return HealthStatus(False, f"memory_limit: {sample.memory_bytes / _MB:.1f} MB over the limit")
    if tracker.over_cpu(limit_view, now):
        return HealthStatus(False, f"cpu_limit: {sample.window_cpu_percent:.1f}% over the limit")
    return HealthStatus(True, HEALTHY)


def command_ready(worker: Worker, health: HealthStatus) -> HealthStatus:
    """Ready = its process runs and no stop (or drain) is under way."""
    if worker.state in (S.STARTING, S.RUNNING):
        return _READY
    return HealthStatus(False, health.reason if not health.is_healthy else "not ready")


def _threads(pid: int) -> int:
    """Threads of the worker's main process, read now (only /metrics shows it; samples skip it)."""
    stat = read_stat(pid)
    return 0 if stat is None else stat.num_threads


def command_snapshot(worker: Worker, now: float, wall: float) -> WorkerSnapshot:
    """The :class:`WorkerSnapshot` a command worker's health port renders, as of ``now``."""
    health = command_health(worker, now)
    ready = command_ready(worker, health)
    state = worker.state
    running = state.has_process
    pid = worker.pid
    started_at = worker.started_at
    started_wall = worker.started_wall
    sample = worker.last_sample if running else None
    limits = worker.config.limits
    uptime = 0.0 if started_at is None or not running else max(0.0, now - started_at)
    remaining = None
    recycle_at = worker.recycle_at
    if recycle_at is not None and running:
        remaining = max(0.0, recycle_at - now)
    asked = worker.asked
    memory = sample.memory_bytes if sample is not None else 0
    threads = _threads(pid) if pid is not None and running else 0
    return WorkerSnapshot(
        name=worker.name,
        stack=worker.project,
        pid=pid if pid is not None else 0,
        health=health,
        ready=ready,
        started=running,
        stopping=state is S.STOPPING,
        start_time_seconds=started_wall if running else None,
        uptime_seconds=uptime,
        cpu_percent=sample.cpu_percent if sample is not None else 0.0,
        memory_bytes=memory,
        memory_percent=memory / _TOTAL_MEMORY * 100.0 if _TOTAL_MEMORY else 0.0,
        num_threads=threads,
        num_children=max(0, sample.num_processes - 1) if sample is not None else 0,
        max_runtime_seconds=limits.max_runtime_s,
        remaining_seconds=remaining,
        memory_limit_bytes=limits.memory_limit_bytes,
        cpu_limit_percent=limits.cpu_limit_percent,
        stop_reason=asked.reason.value if asked is not None and state is S.STOPPING else None,
    )
