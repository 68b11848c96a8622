"""What a function worker's health port answers under ``procguard up``: the snapshots it publishes.

A ``run =`` worker with a ``health_port`` knows its own health (heartbeat,
limits, drain, ``set_ready``): its ProcessManager decides it. Under
``procguard up`` the worker does not serve HTTP itself, and no responder
process runs beside it: the supervisor creates a small shared mapping before
each spawn and hands it down (:meth:`.worker.Worker.spawn`), the worker
publishes its :class:`~procguard.snapshot.WorkerSnapshot` into it a few
times a second and at once on each change, and the supervisor's HTTP thread
(:mod:`.healthports`) answers /health, /ready and /metrics from it through
:class:`~procguard.health.shared.PublishedView`, the reader a standalone
worker's responder uses: the same answers, aged to now, and 503 "no update
from worker for N s" once the worker stopped publishing (hung, holding the
GIL, SIGSTOPped).

Between two processes of the worker (backoff) and before its first snapshot
the answer is the supervisor's own: 503 "not running (backoff, restarting in
N s)" or "starting: no snapshot published yet".

The liveness prober reads the same view instead of asking the port over
HTTP (:func:`port_verdict`): it is the supervisor's own port, and the
verdict is what that port answers at that moment.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from ..snapshot import HealthStatus, WorkerSnapshot
from .command_health import command_health, command_ready, command_snapshot

if TYPE_CHECKING:
    from .worker import Worker

_STARTING = HealthStatus(False, "starting: no snapshot published yet")


def function_snapshot(worker: Worker, now: float, wall: float) -> WorkerSnapshot:
    """The snapshot a function worker's port renders as of ``now`` (read from any thread)."""
    view = worker.published  # swapped whole by the event loop at each spawn and exit
    if view is not None and worker.state.has_process:
        try:
            return view.current()
        except LookupError:  # spawned, not published yet
            return dataclasses.replace(command_snapshot(worker, now, wall), health=_STARTING, ready=_STARTING)
    return command_snapshot(worker, now, wall)  # not running: the supervisor's facts say why


def published_circuits(worker: Worker, now: float, wall: float) -> list[dict[str, Any]]:
    """The circuit breakers a running function worker publishes (as in its ``/metrics`` JSON), else ``[]``.

    What ``status --json`` and the status page show for the worker: an open
    circuit leaves its /health at 200, so the port's verdict alone would hide it.
    """
    if not (worker.publishes_health and worker.state.has_process):
        return []
    return [circuit.to_json() for circuit in function_snapshot(worker, now, wall).circuits]


def answers_ready(worker: Worker, now: float, wall: float) -> bool:
    """True when ``GET /ready`` on the worker's health port answers 200 now (what ``depends_on = { X =
    "ready" }`` waits for): a function worker's published readiness, a command's running and not stopping.
    """
    if worker.publishes_health:
        return function_snapshot(worker, now, wall).ready.is_healthy
    return command_ready(worker, command_health(worker, now)).is_healthy


def port_verdict(worker: Worker, now: float, wall: float) -> tuple[bool, str]:
    """``(healthy, "HTTP 200" / "HTTP 503: why")``: what ``GET /health`` on the worker's port answers now.

    Any worker with a health port: the supervisor serves them all, a function
    worker's from what it publishes, a command's from the supervisor's facts.
    """
    if worker.publishes_health:
        health = function_snapshot(worker, now, wall).health
    else:
        health = command_health(worker, now)
    return (True, "HTTP 200") if health.is_healthy else (False, f"HTTP 503: {health.reason}")
