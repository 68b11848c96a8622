"""Rendering snapshots: the /metrics JSON keys, Prometheus/OpenMetrics parsed back, negotiation."""

from __future__ import annotations

import json

import pytest
from prometheus_client import REGISTRY
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_prometheus

from procguard.health.exposition import (
    CONTENT_TYPE_OPENMETRICS,
    CONTENT_TYPE_PROMETHEUS,
    negotiate,
    render_json,
    render_prometheus,
)
from procguard.snapshot import HealthStatus, WorkerSnapshot

MiB = 1024 * 1024


def snap(name: str = "collector", **kw: object) -> WorkerSnapshot:
    fields: dict[str, object] = dict(
        pid=4242,
        health=HealthStatus(True),
        ready=HealthStatus(True),
        uptime_seconds=3600.0,
        cpu_percent=45.2,
        memory_bytes=856 * MiB,
        memory_percent=8.1,
        num_threads=4,
        num_children=2,
        heartbeat_age_seconds=5.2,
        iterations=17,
        failed_iterations=1,
        max_iterations=100,
        max_runtime_seconds=24 * 3600.0,
        remaining_seconds=23 * 3600.0,
        memory_limit_bytes=2048 * MiB,
        cpu_limit_percent=80.0,
        start_time_seconds=1_700_000_000.0,
    )
    fields.update(kw)
    return WorkerSnapshot(name=name, **fields)  # type: ignore[arg-type]


def samples(families: object) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in families:  # type: ignore[attr-defined]
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_json_has_exactly_the_design_keys() -> None:
    doc = json.loads(render_json(snap()))
    assert set(doc) == {"metrics", "health", "runtime"}
    assert set(doc["metrics"]) == {
        "pid", "uptime_seconds", "cpu_percent", "memory_mb", "memory_percent", "num_threads",
        "heartbeat_age_seconds",
    }
    assert doc["health"] == {"is_healthy": True, "reason": "healthy"}
    assert doc["runtime"] == {"uptime_hours": 1.0, "remaining_hours": 23.0}
    assert doc["metrics"]["memory_mb"] == 856.0
    assert doc == snap().to_metrics_json()


def test_prometheus_text_parses_back_for_several_workers() -> None:
    body, content_type = render_prometheus(
        [snap("a"), snap("b", health=HealthStatus(False, "heartbeat stale"), heartbeat_age_seconds=None)]
    )
    assert content_type == CONTENT_TYPE_PROMETHEUS
    values = samples(parse_prometheus(body.decode()))
    a = (("worker", "a"),)
    b = (("worker", "b"),)
    assert values[("procguard_healthy", a)] == 1.0
    assert values[("procguard_healthy", b)] == 0.0
    assert values[("procguard_uptime_seconds", a)] == 3600.0
    assert values[("procguard_memory_resident_bytes", a)] == 856 * MiB
    assert values[("procguard_memory_limit_bytes", a)] == 2048 * MiB
    assert values[("procguard_cpu_usage_ratio", a)] == pytest.approx(0.452)
    assert values[("procguard_cpu_limit_ratio", a)] == pytest.approx(0.8)
    assert values[("procguard_heartbeat_age_seconds", a)] == 5.2
    assert ("procguard_heartbeat_age_seconds", b) not in values  # not applicable: no sample
    assert values[("procguard_iterations_total", a)] == 17
    assert values[("procguard_failed_iterations_total", a)] == 1
    assert values[("procguard_remaining_runtime_seconds", a)] == 23 * 3600.0
    assert values[("procguard_max_runtime_seconds", a)] == 24 * 3600.0
    assert values[("procguard_max_iterations", a)] == 100
    assert values[("procguard_start_time_seconds", a)] == 1_700_000_000.0
    # Stops are counted where they survive a restart (the supervisor), not by the worker itself.
    assert not [name for name, _labels in values if name.startswith("procguard_stops")]


def test_a_stack_worker_carries_the_stack_label() -> None:
    body, _ = render_prometheus([snap("collector", stack="analyticbot")])
    values = samples(parse_prometheus(body.decode()))
    assert values[("procguard_uptime_seconds", (("stack", "analyticbot"), ("worker", "collector")))] == 3600.0


def test_openmetrics_parses_back_and_ends_with_eof() -> None:
    body, content_type = render_prometheus([snap()], openmetrics=True)
    assert content_type == CONTENT_TYPE_OPENMETRICS
    text = body.decode()
    assert text.endswith("# EOF\n")
    families = {f.name: f for f in parse_openmetrics(text)}
    assert families["procguard_uptime_seconds"].unit == "seconds"
    assert families["procguard_iterations"].type == "counter"
    values = samples(families.values())
    assert values[("procguard_iterations_total", (("worker", "collector"),))] == 17


def test_limits_absent_when_not_configured() -> None:
    body, _ = render_prometheus(
        [snap(max_iterations=None, max_runtime_seconds=None, remaining_seconds=None,
              memory_limit_bytes=None, cpu_limit_percent=None)]
    )
    names = {name for name, _labels in samples(parse_prometheus(body.decode()))}
    for absent in ("procguard_max_iterations", "procguard_max_runtime_seconds",
                   "procguard_remaining_runtime_seconds", "procguard_memory_limit_bytes",
                   "procguard_cpu_limit_ratio"):
        assert absent not in names
    assert "procguard_uptime_seconds" in names


def test_label_values_are_escaped() -> None:
    body, _ = render_prometheus([snap('we"ird\nname')])
    values = samples(parse_prometheus(body.decode()))
    assert values[("procguard_uptime_seconds", (("worker", 'we"ird\nname'),))] == 3600.0


def test_content_types_match_prometheus_client() -> None:
    from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
    from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST

    assert CONTENT_TYPE_PROMETHEUS == CONTENT_TYPE_PLAIN_0_0_4
    assert CONTENT_TYPE_OPENMETRICS == CONTENT_TYPE_LATEST


def test_global_registry_is_untouched() -> None:
    before = set(REGISTRY._names_to_collectors)
    render_prometheus([snap()])
    render_prometheus([snap()], openmetrics=True)
    assert set(REGISTRY._names_to_collectors) == before
    assert not any(name.startswith("procguard") for name in before)


PROMETHEUS_SCRAPER = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


@pytest.mark.parametrize(
    ("query", "accept", "expected"),
    [
        (None, None, "json"),
        (None, "", "json"),
        (None, "*/*", "json"),
        (None, "application/json", "json"),
        (None, "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", "json"),
        (None, PROMETHEUS_SCRAPER, "openmetrics"),
        (None, "text/plain;version=0.0.4", "prometheus"),
        (None, "text/plain; version=0.0.4; q=0.9, application/json; q=0.5", "prometheus"),
        (None, "text/*", "prometheus"),
        (None, "application/openmetrics-text", "openmetrics"),
        (None, "application/json;q=0, text/plain", "prometheus"),
        (None, "garbage,;;;q=x", "json"),
        ("prometheus", "application/json", "prometheus"),
        ("openmetrics", None, "openmetrics"),
        ("JSON", PROMETHEUS_SCRAPER, "json"),
        ("xml", None, None),
    ],
)
def test_negotiate(query: str | None, accept: str | None, expected: str | None) -> None:
    assert negotiate(query, accept) == expected
