"""The supervisor counts: its /metrics after real recycles, read by a real Prometheus parser and promtool.

The counts are the supervisor's own, so they survive the worker's restarts
(a worker's own counter would start again from zero with every process);
what the supervisor does not know is absent, never a placeholder 0.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .helpers import free_port, wait_for
from .supervisor_workers.stackkit import Stack, lines, write_config

WORKER = Path(__file__).resolve().parent / "supervisor_workers" / "outcome_worker.py"
MIB = 1024 * 1024


def scrape(port: int, accept: str = "text/plain; version=0.0.4") -> str:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read().decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Each sample by name and labels, as Prometheus stores it: a label with an empty value is no label."""
    return {
        (s.name, tuple(sorted((k, v) for k, v in s.labels.items() if v))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.mark.slow
def test_five_recycles_are_counted_and_promtool_agrees(tmp_path: Path, state_dir: Path, spawn: Any) -> None:
    record, port = tmp_path / "leaker.record", free_port()
    config = write_config(tmp_path, {
        # leaks 20 MB/s from 30 MB in its first 5 runs, then idles: exactly 5 memory recycles
        "leaker": {"command": [sys.executable, str(WORKER), "plain", "leak:5", str(record), "100"],
                   "memory_limit": "100MB"},
        "idle": {"command": [sys.executable, str(WORKER), "plain", "idle", str(tmp_path / "idle.record")],
                 "memory_limit": 0},
    }, project="metered", status_port=port)
    stack = Stack(config, state_dir, spawn, project="metered", tuning="start_period_s=0.2")
    stack.up()
    stack.wait_up()
    wait_for(lambda: len([x for x in lines(record) if x.startswith("start")]) >= 6, timeout=90,
             message=lambda: f"6 runs of the leaker; {stack.output()[-2000:]}")
    stack.wait_state("leaker", "running")

    leaker = (("stack", "metered"), ("worker", "leaker"))
    running = ("procguard_worker_state", tuple(sorted((*leaker, ("state", "running")))))

    def counted() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
        values = samples(scrape(port))  # the page's view follows the loop a moment later
        ready = values[("procguard_worker_restarts_total", leaker)] == 5 and values[running]
        sampled = ("procguard_worker_memory_resident_bytes", leaker) in values  # unknown until sampled
        return values if ready and sampled else None

    values = wait_for(counted, message="the restart counter at 5, the 6th run running and sampled")
    idle = (("stack", "metered"), ("worker", "idle"))
    stops = {dict(labels)["reason"]: v for (name, labels), v in values.items()
             if name == "procguard_worker_stops_total" and dict(labels)["worker"] == "leaker"}
    assert stops["memory_limit"] == 5 and sum(stops.values()) == 5, stops
    assert values[("procguard_worker_up", leaker)] == 1
    assert values[running] == 1
    assert values[("procguard_worker_state", tuple(sorted((*leaker, ("state", "fatal")))))] == 0
    assert values[("procguard_worker_memory_limit_bytes", leaker)] == 100 * MIB
    assert values[("procguard_worker_memory_resident_bytes", leaker)] > 0
    assert values[("procguard_worker_cpu_seconds_total", leaker)] > 0
    assert values[("procguard_worker_start_time_seconds", leaker)] > 1_600_000_000
    assert ("procguard_worker_memory_limit_bytes", idle) not in values  # no limit: absent, not 0
    assert ("procguard_worker_healthy", leaker) not in values  # never probed: unknown
    # no placeholder families of the worker's own endpoint on the supervisor's
    assert not any(name in ("procguard_threads", "procguard_iterations_total") for name, _ in values)

    text = scrape(port)
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    checked = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True,
                             timeout=60, check=False)
    assert checked.returncode == 0 and not checked.stdout.strip() and not checked.stderr.strip(), (
        checked.stdout + checked.stderr)


def test_openmetrics_of_the_supervisor_parses_and_ends_with_eof(tmp_path: Path, state_dir: Path,
                                                                spawn: Any) -> None:
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics

    port = free_port()
    config = write_config(tmp_path, {
        "idle": {"command": [sys.executable, str(WORKER), "plain", "idle", str(tmp_path / "idle.record")]},
    }, project="metered", status_port=port)
    stack = Stack(config, state_dir, spawn, project="metered", tuning="start_period_s=0.2")
    stack.up()
    stack.wait_state("idle", "running")
    text = scrape(port, accept="application/openmetrics-text; version=1.0.0")
    assert text.endswith("# EOF\n")
    families = {f.name: f for f in parse_openmetrics(text)}
    assert families["procguard_worker_stops"].type == "counter"
    assert families["procguard_worker_restarts"].type == "counter"
    assert families["procguard_worker_up"].type == "gauge"


def test_the_worker_label_is_the_same_on_every_endpoint_and_in_every_generated_file(
    tmp_path: Path, state_dir: Path, spawn: Any
) -> None:
    """The name in procguard.toml labels a worker's series on its own endpoint, on the supervisor's,
    and in the environment every production file gives it, so dev and production series join."""
    from procguard.config import load_config
    from procguard.deploy import all_settings, render

    port, health = free_port(), free_port()
    config = write_config(tmp_path, {
        "collector": {"run": "outcome_worker:step", "interval": "1s", "health_port": health,
                      "cwd": str(WORKER.parent),
                      "env": {"OUTCOME_EVENT": "idle", "OUTCOME_RECORD": str(tmp_path / "c.record")}},
    }, project="metered", status_port=port)
    stack = Stack(config, state_dir, spawn, project="metered", tuning="start_period_s=0.2")
    stack.up()
    stack.wait_state("collector", "running")
    own = wait_for(lambda: samples(scrape(health)), message="the worker's own /metrics")
    labels = {dict(key[1]).get("worker") for key in own} | {dict(key[1]).get("stack") for key in own}
    assert labels == {"collector", "metered"}, labels
    supervisor = samples(scrape(port))
    assert ("procguard_worker_up", (("stack", "metered"), ("worker", "collector"))) in supervisor
    loaded = load_config(config)
    for target in ("systemd", "supervisor", "kubernetes"):
        files = render(target, loaded, all_settings(loaded, {"image": "example/app:1"}))
        text = "\n".join(f.text for f in files)
        assert re.search(r'PROCGUARD_WORKER\W+(value\W+)?collector\b', text), target
        assert re.search(r'PROCGUARD_STACK\W+(value\W+)?metered\b', text), target
