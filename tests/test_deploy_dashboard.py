"""The Grafana dashboard only queries metrics that procguard really exports."""

from __future__ import annotations

import json
import re

from prometheus_client.parser import text_string_to_metric_families

from procguard.snapshot import HealthStatus, WorkerSnapshot

from .helpers import REPO_ROOT

DASHBOARD = REPO_ROOT / "docs" / "grafana-dashboard.json"


def _exported_names() -> set[str]:
    """Every series name a worker's own endpoint and the supervisor's status port render."""
    from procguard.health.exposition import render_prometheus
    from procguard.supervisor.metrics import render_metrics
    from procguard.supervisor.states import WorkerState
    from procguard.supervisor.view import View, WorkerFigures

    snapshot = WorkerSnapshot(
        name="collector", stack="analyticbot", pid=1234, health=HealthStatus(True), ready=HealthStatus(True),
        start_time_seconds=1_700_000_000.0, uptime_seconds=60, cpu_percent=10, memory_bytes=100 << 20,
        memory_percent=1.0, num_threads=3, num_children=2, heartbeat_age_seconds=1.5, iterations=5,
        failed_iterations=1, max_iterations=100, max_runtime_seconds=3600, remaining_seconds=3540,
        memory_limit_bytes=2 << 30, cpu_limit_percent=80,
    )
    figures = WorkerFigures(
        name="collector", state=WorkerState.RUNNING, restarts=2, stops={"memory_limit": 2}, cpu_seconds_total=3.5,
        memory_bytes=100 << 20, start_time_seconds=1_700_000_000.0, memory_limit_bytes=2 << 30, healthy=True,
    )
    worker_body, _ = render_prometheus([snapshot])
    supervisor_body, _ = render_metrics(View(project="analyticbot", supervisor_pid=1, figures=[figures]))
    names: set[str] = set()
    for body in (worker_body, supervisor_body):
        for family in text_string_to_metric_families(body.decode()):
            names.update(sample.name for sample in family.samples)
            labels = {key for sample in family.samples for key in sample.labels}
            assert {"worker", "stack"} <= labels, family.name  # the same labels on both endpoints
    return names


def test_dashboard_queries_only_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {name for expr in exprs for name in re.findall(r"\bprocguard_[a-z_]+", expr)}
    exported = _exported_names()
    assert used, "the dashboard queries nothing"
    assert used <= exported, f"not exported: {sorted(used - exported)}"
    # every panel is filtered by the worker variable, every variable is used
    assert all('worker=~"$worker"' in expr for expr in exprs)
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
