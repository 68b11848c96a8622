"""The supervisor's own Prometheus families: what it knows of every worker of its stack.

Served on the status port (``GET /metrics``). Every sample is labelled
``stack`` (the project name), ``worker`` (the name in procguard.toml,
the same value the worker's own endpoint and every generated production
file use) and ``copy`` (the copy's number K of a worker with copies,
``X:K``; empty for a worker without copies, which Prometheus stores as no
label at all, so its series are the ones it always had). ``worker`` stays the
name in procguard.toml so that ``sum by (worker)`` adds up the copies; the
copy is not called ``instance`` because Prometheus gives that label to the
scraped target. The counts are the supervisor's, so they survive the workers'
restarts; a value it does not know (no process, not sampled yet, no limit)
has no sample at all, never a placeholder 0.

================================================ ==========================================
``procguard_worker_up``                          gauge: 1 while the worker has a process
``procguard_worker_state{state}``                gauge: 1 for the current state, 0 for the others
``procguard_worker_restarts_total``              counter: restarts done by the supervisor
``procguard_worker_stops_total{reason}``         counter: stops by reason (every reason starts at 0)
``procguard_worker_memory_resident_bytes``       gauge: RSS of the worker's own process tree
``procguard_worker_cpu_seconds_total``           counter: CPU of the worker's own trees
``procguard_worker_start_time_seconds``          gauge: Unix time the current process started
``procguard_worker_memory_limit_bytes``          gauge: the configured memory limit
``procguard_worker_healthy``                     gauge: 1 when its /health answers 200
================================================ ==========================================

prometheus_client is imported on the first request only (the supervisor's
footprint); nothing is registered in its global registry.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from ..reasons import StopReason
from .states import WorkerState
from .view import View, WorkerFigures

if TYPE_CHECKING:
    from prometheus_client.core import Metric

#: The reasons a running supervisor can count (``supervisor_died`` is written by the next one).
COUNTED_REASONS: tuple[str, ...] = tuple(r.value for r in StopReason if r is not StopReason.SUPERVISOR_DIED)


class StackCollector:
    """A prometheus_client collector over one published :class:`View`."""

    def __init__(self, view: View) -> None:
        self._view = view

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        stack = self._view.project
        labels = ["stack", "worker", "copy"]
        up = GaugeMetricFamily("procguard_worker_up", "1 while the worker has a process.", labels=labels)
        state = GaugeMetricFamily(
            "procguard_worker_state", "1 for the worker's current state.", labels=[*labels, "state"]
        )
        restarts = CounterMetricFamily(
            "procguard_worker_restarts", "Restarts of the worker done by the supervisor.", labels=labels
        )
        stops = CounterMetricFamily(
            "procguard_worker_stops", "Stops of the worker by reason.", labels=[*labels, "reason"]
        )
        memory = GaugeMetricFamily(
            "procguard_worker_memory_resident_bytes", "RSS of the worker's own process tree.", labels=labels
        )
        cpu = CounterMetricFamily(
            "procguard_worker_cpu_seconds", "CPU time of the worker's own process trees.", labels=labels
        )
        start = GaugeMetricFamily(
            "procguard_worker_start_time_seconds",
            "Unix time the worker's current process started.",
            labels=labels,
        )
        limit = GaugeMetricFamily(
            "procguard_worker_memory_limit_bytes", "The worker's configured memory limit.", labels=labels
        )
        healthy = GaugeMetricFamily(
            "procguard_worker_healthy", "1 when the worker's /health answers 200.", labels=labels
        )
        for figures in self._view.figures:
            values = [stack, figures.name, figures.copy]
            up.add_metric(values, 1.0 if figures.up else 0.0)
            for each in WorkerState:
                state.add_metric([*values, each.value], 1.0 if each is figures.state else 0.0)
            restarts.add_metric(values, float(figures.restarts))
            for reason in COUNTED_REASONS:
                stops.add_metric([*values, reason], float(figures.stops.get(reason, 0)))
            cpu.add_metric(values, figures.cpu_seconds_total)
            _optional(memory, values, figures.memory_bytes)
            _optional(start, values, figures.start_time_seconds)
            _optional(limit, values, figures.memory_limit_bytes)
            _optional(healthy, values, None if figures.healthy is None else float(figures.healthy))
        yield from (up, state, restarts, stops, memory, cpu, start, limit, healthy)


def _optional(family: Metric, values: list[str], value: float | None) -> None:
    if value is not None:
        family.add_metric(values, float(value))  # type: ignore[attr-defined]


def render_metrics(view: View, *, openmetrics: bool = False) -> tuple[bytes, str]:
    """``(body, content type)`` of the supervisor's ``/metrics`` for ``view``."""
    from prometheus_client.registry import CollectorRegistry

    from ..health.exposition import CONTENT_TYPE_OPENMETRICS, CONTENT_TYPE_PROMETHEUS

    registry = CollectorRegistry(auto_describe=False)
    registry.register(StackCollector(view))
    if openmetrics:
        from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

        return generate_openmetrics(registry), CONTENT_TYPE_OPENMETRICS
    from prometheus_client.exposition import generate_latest

    return generate_latest(registry), CONTENT_TYPE_PROMETHEUS


__all__ = ["COUNTED_REASONS", "StackCollector", "WorkerFigures", "render_metrics"]
