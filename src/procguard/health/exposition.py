"""A :class:`~procguard.snapshot.WorkerSnapshot` rendered for machines.

- :func:`render_json`: the ``/metrics`` JSON document (its keys are a
  promise to users, from ``WorkerSnapshot.to_metrics_json``).
- :func:`render_prometheus`: Prometheus text (0.0.4) or OpenMetrics 1.0 for
  one or many workers, built with prometheus_client from a custom collector
  on a fresh registry, so nothing leaks into (or out of) the global default
  registry of the process. Every sample carries ``worker="<name>"``, so the
  series of several workers can share one body (``SnapshotCollector`` beside
  an application's own metrics). The supervisor's status port renders its
  own families instead (:mod:`procguard.supervisor.metrics`).
- :func:`negotiate` picks the format from ``?format=`` and ``Accept``.

prometheus_client is imported only when Prometheus text is rendered, so a
responder that only ever answers probes and JSON stays ~5 MB smaller.

Metric families (all gauges unless noted; a family has no sample for a
worker where the value does not apply, e.g. no limit configured):

================================== ==========================================
``procguard_healthy``              1 when /health would answer 200
``procguard_ready``                1 when /ready would answer 200
``procguard_stopping``             1 once the worker is stopping
``procguard_uptime_seconds``       time since the worker started
``procguard_cpu_usage_ratio``      CPU averaged over the window, 1.0 = one core
``procguard_memory_resident_bytes`` RSS of the worker and its descendants
``procguard_memory_usage_ratio``   that RSS over the machine's memory
``procguard_threads``              threads of the worker process
``procguard_children``             live descendant processes
``procguard_heartbeat_age_seconds`` time since the work loop last beat
``procguard_start_time_seconds``   Unix time the worker process started
``procguard_iterations_total``     counter: iterations of the work loop
``procguard_failed_iterations_total`` counter: iterations that raised
``procguard_circuit_state``        per ``circuit``: 0 closed, 1 half-open, 2 open
``procguard_circuit_calls_total``  counter per ``circuit`` and ``result``:
                                   success, failure, rejected
``procguard_remaining_runtime_seconds`` time left before the runtime limit
``procguard_max_runtime_seconds``  limit: runtime
``procguard_max_iterations``       limit: iterations
``procguard_memory_limit_bytes``   limit: memory
``procguard_cpu_limit_ratio``      limit: CPU (1.0 = one core)
``<name>``                         the program's own gauges
                                   (``ProcessManager.set_gauge``), each its
                                   own family, labelled like the rest plus
                                   ``copy`` for a copy of a worker
================================== ==========================================

Every sample carries ``worker`` (the worker's name in procguard.toml when it
runs in a stack, else its own name) and, in a stack, ``stack``. Counts that
must survive a restart (stops by reason, restarts) are the supervisor's
(``procguard_worker_*`` on its status port): a worker's own counter would
start again from zero with every new process. In production, a change of
``procguard_start_time_seconds`` is a restart whoever did it (systemd,
Kubernetes, supervisord).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Literal

from ..snapshot import CIRCUIT_STATE_VALUES, WorkerSnapshot

if TYPE_CHECKING:
    from prometheus_client.core import Metric

__all__ = [
    "CONTENT_TYPE_JSON",
    "CONTENT_TYPE_OPENMETRICS",
    "CONTENT_TYPE_PROMETHEUS",
    "MetricsFormat",
    "SnapshotCollector",
    "negotiate",
    "render_json",
    "render_prometheus",
]

CONTENT_TYPE_JSON = "application/json"
#: prometheus_client's CONTENT_TYPE_PLAIN_0_0_4 (what every Prometheus scraper accepts).
CONTENT_TYPE_PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"
#: prometheus_client.openmetrics.exposition.CONTENT_TYPE_LATEST.
CONTENT_TYPE_OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"

MetricsFormat = Literal["json", "prometheus", "openmetrics"]

#: Values accepted by ``?format=`` (the error message lists them).
FORMAT_NAMES: dict[str, MetricsFormat] = {
    "json": "json",
    "prometheus": "prometheus",
    "text": "prometheus",
    "openmetrics": "openmetrics",
}

_MEDIA_TYPES: dict[str, MetricsFormat] = {
    "application/json": "json",
    "application/openmetrics-text": "openmetrics",
    "text/plain": "prometheus",
}


def render_json(snapshot: WorkerSnapshot) -> bytes:
    """The ``/metrics`` JSON body (the documented keys, nothing else)."""
    return json.dumps(snapshot.to_metrics_json(), separators=(",", ":")).encode()


def render_prometheus(
    snapshots: Iterable[WorkerSnapshot], *, openmetrics: bool = False
) -> tuple[bytes, str]:
    """Prometheus text (or OpenMetrics with ``openmetrics=True``) for any number of workers.

    Returns ``(body, content_type)``. Worker names should be unique; samples
    are labelled ``worker="<name>"`` (and ``stack="<project>"`` in a stack).
    """
    from prometheus_client.registry import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(lambda: list(snapshots)))
    if openmetrics:
        from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

        return generate_openmetrics(registry), CONTENT_TYPE_OPENMETRICS
    from prometheus_client.exposition import generate_latest

    return generate_latest(registry), CONTENT_TYPE_PROMETHEUS


def negotiate(query_format: str | None, accept: str | None) -> MetricsFormat | None:
    """The /metrics format asked for; ``None`` when ``?format=`` names no known format.

    ``?format=`` wins. Otherwise the ``Accept`` media ranges are weighed by
    their ``q`` (the most specific range decides for each type, as in RFC
    9110); ties and ``*/*`` keep the documented default, JSON. A Prometheus
    scraper (``application/openmetrics-text;...,text/plain;version=0.0.4;q=0.5,
    */*;q=0.1``) gets OpenMetrics; ``text/plain;version=0.0.4`` gets text.
    """
    if query_format is not None:
        return FORMAT_NAMES.get(query_format.strip().lower())
    if not accept:
        return "json"
    ranges: list[tuple[str, str, float]] = []
    for part in accept.split(","):
        fields = [f.strip() for f in part.split(";")]
        media = fields[0].lower()
        if "/" not in media:
            continue
        main, _, sub = media.partition("/")
        q = 1.0
        for param in fields[1:]:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        ranges.append((main, sub, q))
    best: MetricsFormat = "json"
    best_q = 0.0
    for media, fmt in _MEDIA_TYPES.items():  # dict order = tie-break order
        main, _, sub = media.partition("/")
        q = _quality(ranges, main, sub)
        if q > best_q:
            best, best_q = fmt, q
    return best


def _quality(ranges: list[tuple[str, str, float]], main: str, sub: str) -> float:
    specificity = -1
    quality = 0.0
    for r_main, r_sub, q in ranges:
        if r_main == main and r_sub == sub:
            level = 2
        elif r_main == main and r_sub == "*":
            level = 1
        elif r_main == "*" and r_sub == "*":
            level = 0
        else:
            continue
        if level > specificity:
            specificity, quality = level, q
    return quality


class SnapshotCollector:
    """A prometheus_client collector over a callable returning snapshots.

    Register it on your own :class:`CollectorRegistry` (never the global one)
    to serve procguard metrics next to an application's own.
    """

    def __init__(self, snapshots: Callable[[], Iterable[WorkerSnapshot]]) -> None:
        self._snapshots = snapshots

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        snaps = list(self._snapshots())
        # ``stack`` only where there is one (a worker of procguard up or of a generated stack).
        with_stack = any(snap.stack for snap in snaps)
        labels = ["stack", "worker"] if with_stack else ["worker"]

        def values(snap: WorkerSnapshot) -> list[str]:
            return [snap.stack or "", snap.name] if with_stack else [snap.name]

        for spec in _GAUGES:
            family = GaugeMetricFamily(spec.name, spec.help, labels=labels, unit=spec.unit)
            for snap in snaps:
                value = spec.value(snap)
                if value is not None:
                    family.add_metric(values(snap), float(value))
            yield family
        iterations = CounterMetricFamily(
            "procguard_iterations", "Iterations of the work loop.", labels=labels
        )
        failed = CounterMetricFamily(
            "procguard_failed_iterations", "Iterations of the work loop that raised.", labels=labels
        )
        for snap in snaps:
            iterations.add_metric(values(snap), float(snap.iterations))
            failed.add_metric(values(snap), float(snap.failed_iterations))
        yield iterations
        yield failed
        if any(snap.circuits for snap in snaps):
            yield from _circuit_families(snaps, labels, values)
        if any(snap.gauges for snap in snaps):
            yield from _program_gauges(snaps, labels, values)


def _program_gauges(
    snaps: list[WorkerSnapshot], labels: list[str], values: Callable[[WorkerSnapshot], list[str]]
) -> Iterator[Metric]:
    """One family per gauge the programs set (``set_gauge``), with ``copy`` where a snapshot has one."""
    from prometheus_client.core import GaugeMetricFamily

    with_copy = any(snap.copy is not None for snap in snaps)
    names = list(dict.fromkeys(name for snap in snaps for name, _value in snap.gauges))
    for name in names:
        own_labels = [*labels, "copy"] if with_copy else labels
        family = GaugeMetricFamily(name, "Set by the worker's program (set_gauge).", labels=own_labels)
        for snap in snaps:
            value = snap.gauge(name)
            if value is None:
                continue
            extra = [str(snap.copy or "")] if with_copy else []
            family.add_metric([*values(snap), *extra], value)
        yield family


def _circuit_families(
    snaps: list[WorkerSnapshot], labels: list[str], values: Callable[[WorkerSnapshot], list[str]]
) -> Iterator[Metric]:
    """``procguard_circuit_state`` and ``procguard_circuit_calls_total``, one series per circuit."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    state = GaugeMetricFamily(
        "procguard_circuit_state",
        "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
        labels=[*labels, "circuit"],
    )
    calls = CounterMetricFamily(
        "procguard_circuit_calls",
        "Calls through a circuit breaker by result: success, failure, rejected (refused without calling).",
        labels=[*labels, "circuit", "result"],
    )
    for snap in snaps:
        for circuit in snap.circuits:
            state.add_metric([*values(snap), circuit.name], float(CIRCUIT_STATE_VALUES.get(circuit.state, 2)))
            for result, count in (
                ("success", circuit.successes), ("failure", circuit.failures), ("rejected", circuit.rejected)
            ):
                calls.add_metric([*values(snap), circuit.name, result], float(count))
    yield state
    yield calls


class _Gauge:
    __slots__ = ("help", "name", "unit", "value")

    def __init__(
        self, name: str, help: str, value: Callable[[WorkerSnapshot], float | None], unit: str = ""
    ) -> None:
        self.name = name
        self.help = help
        self.value = value
        self.unit = unit


def _ratio(percent: float | None) -> float | None:
    return None if percent is None else percent / 100.0


_GAUGES: tuple[_Gauge, ...] = (
    _Gauge("procguard_healthy", "1 when the worker is healthy (/health answers 200).",
           lambda s: 1.0 if s.health.is_healthy else 0.0),
    _Gauge("procguard_ready", "1 when the worker is ready (/ready answers 200).",
           lambda s: 1.0 if s.ready.is_healthy else 0.0),
    _Gauge("procguard_stopping", "1 once the worker is stopping.", lambda s: 1.0 if s.stopping else 0.0),
    _Gauge("procguard_uptime_seconds", "Time since the worker started.",
           lambda s: s.uptime_seconds, "seconds"),
    _Gauge("procguard_start_time_seconds", "Unix time the worker process started (a change is a restart).",
           lambda s: s.start_time_seconds, "seconds"),
    _Gauge("procguard_cpu_usage_ratio", "CPU used, averaged over the sampling window (1.0 = one core).",
           lambda s: _ratio(s.cpu_percent), "ratio"),
    _Gauge("procguard_memory_resident_bytes", "Resident memory of the worker and its descendants.",
           lambda s: s.memory_bytes, "bytes"),
    _Gauge("procguard_memory_usage_ratio", "Resident memory over the machine's total memory.",
           lambda s: _ratio(s.memory_percent), "ratio"),
    _Gauge("procguard_threads", "Threads of the worker process.", lambda s: s.num_threads),
    _Gauge("procguard_children", "Live descendant processes of the worker.", lambda s: s.num_children),
    _Gauge("procguard_heartbeat_age_seconds", "Time since the work loop last called heartbeat().",
           lambda s: s.heartbeat_age_seconds, "seconds"),
    _Gauge("procguard_remaining_runtime_seconds", "Time left before the runtime limit recycles the worker.",
           lambda s: s.remaining_seconds, "seconds"),
    _Gauge("procguard_max_runtime_seconds", "Configured runtime limit.",
           lambda s: s.max_runtime_seconds, "seconds"),
    _Gauge("procguard_max_iterations", "Configured iteration limit.", lambda s: s.max_iterations),
    _Gauge("procguard_memory_limit_bytes", "Configured memory limit.",
           lambda s: s.memory_limit_bytes, "bytes"),
    _Gauge("procguard_cpu_limit_ratio", "Configured CPU limit (1.0 = one core).",
           lambda s: _ratio(s.cpu_limit_percent), "ratio"),
)
