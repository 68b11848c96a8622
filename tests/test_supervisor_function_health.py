"""A function worker's health port under ``procguard up``: served by the supervisor, no responder.

Real stacks, real sockets on 127.0.0.1, free ports, real signals. What is
checked:

- /health, /ready and /metrics (JSON and Prometheus) of a ``run =`` worker
  with a ``health_port`` come from the supervisor's own socket, with the
  figures of the worker's own snapshot (its pid, heartbeat age, iteration
  count going up); no health responder process anywhere in the stack's
  tree: the worker is one process; the token guards /metrics, the Host
  check holds;
- a worker that cannot publish (SIGSTOPped) reads 503 "no update from
  worker" within its stale window, on its port and in ``status``, and
  healthy again once it runs;
- the port is kept with 503 "not running (backoff ...)" between two
  processes, released at ``procguard stop``;
- an operator's stop with a drain turns /ready 503 while the worker still
  runs (the worker's own drain, published at once).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .helpers import PROCGUARD, free_port, stop_process_tree, wait_for
from .http_abuse import FOREIGN_HOSTS, assert_token_guards_metrics, get
from .supervisor_workers.stackkit import Stack, alive, write_config
from .test_supervisor_health_ports import _cmdline, _descendants, listening_pid, refused

#: Probes read the snapshot often, but never restart the worker here (the SIGSTOP test needs it kept).
TUNING = "start_period_s=0.3,sample_interval_s=0.2,probe_delay_s=0.2,probe_period_s=0.2,probe_failure_threshold=1000"
PROJECT = f"fnhealth{os.getpid()}"
TOKEN = "fn-s3cret"
TARGET = "tests.supervisor_workers.targets:idle"
#: The published snapshot turns stale after 5 s; allow for a loaded machine on top.
STALE_WITHIN_S = 12.0


def _json(port: int, path: str, **headers: str) -> tuple[int, dict[str, Any]]:
    status, _headers, body = get(port, path, **headers)
    return status, json.loads(body)


def _prometheus(port: int, **headers: str) -> dict[str, Any]:
    status, _headers, body = get(port, "/metrics?format=prometheus", **headers)
    assert status == 200, body
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, dict[str, int]]]:
    """``fn`` (a function worker with a health port) and ``locked`` (the same with a token)."""
    tmp_path = tmp_path_factory.mktemp("fnhealth")
    started: list[subprocess.Popen[bytes]] = []

    def spawn(argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, **kwargs)
        started.append(proc)
        return proc

    ports = {"fn": free_port(), "locked": free_port()}
    config = write_config(tmp_path, {
        "fn": {"run": TARGET, "interval": "0.1s", "health_port": ports["fn"], "heartbeat_timeout": "60s",
               "max_runtime": "1h"},
        "locked": {"run": TARGET, "interval": "1s", "health_port": ports["locked"],
                   "env": {"PROCGUARD_HEALTH_TOKEN": TOKEN}},
    }, project=PROJECT, defaults={"grace": "5s"})
    stack = Stack(config, tmp_path / "state", spawn, project=PROJECT, tuning=TUNING)
    for var in ("PROCGUARD_INSTANCE", "NOTIFY_SOCKET", "WATCHDOG_USEC", "PROCGUARD_HEALTH_TOKEN"):
        stack.env.pop(var, None)
    try:
        stack.up()
        for name in ports:
            stack.wait_worker(name, lambda w: w["state"] == "running" and w["health"] == "HTTP 200",
                              what="running and healthy")
        yield stack, ports
    finally:
        for proc in started:
            stop_process_tree(proc, grace=5)


def test_the_supervisor_answers_from_the_workers_own_snapshot(stack: tuple[Stack, dict[str, int]]) -> None:
    up, ports = stack
    assert up.proc is not None
    fn = up.worker("fn")
    assert fn is not None and fn["runner"] is True
    port = ports["fn"]
    assert _json(port, "/health") == (200, {"status": "ok", "reason": "healthy"})
    assert _json(port, "/ready") == (200, {"status": "ready", "reason": "ready"})
    # The listening socket is the supervisor's: the worker holds none, and nothing else runs beside it.
    tree = {pid: _cmdline(pid) for pid in _descendants(up.proc.pid)}
    assert listening_pid(port, [up.proc.pid, *tree]) == up.proc.pid
    assert not [cmd for cmd in tree.values() if "responder" in cmd], tree
    assert _descendants(fn["pid"]) == [], {pid: _cmdline(pid) for pid in _descendants(fn["pid"])}

    status, metrics = _json(port, "/metrics")
    assert status == 200
    assert metrics["metrics"]["pid"] == fn["pid"]  # the worker's own figures, published by it
    assert metrics["metrics"]["memory_mb"] > 1 and metrics["metrics"]["num_threads"] >= 2
    assert 0 <= metrics["metrics"]["heartbeat_age_seconds"] < 5
    assert metrics["health"] == {"is_healthy": True, "reason": "healthy"}
    assert 0 < metrics["runtime"]["remaining_hours"] <= 1.0

    families = _prometheus(port)
    first = families["procguard_iterations"].samples[0]
    assert first.labels == {"worker": "fn", "stack": PROJECT}
    assert families["procguard_healthy"].samples[0].value == 1
    # 0.1 s interval: the count the port shows goes up as the worker works (it is the worker's count)
    wait_for(lambda: _prometheus(port)["procguard_iterations"].samples[0].value >= first.value + 3,
             message="the published iteration count to go up")
    status, headers, _ = get(port, "/metrics?format=openmetrics")
    assert status == 200 and headers["content-type"].startswith("application/openmetrics-text")


def test_token_and_host_check_on_a_function_workers_port(stack: tuple[Stack, dict[str, int]]) -> None:
    _up, ports = stack
    port = ports["locked"]
    assert_token_guards_metrics(port, TOKEN)
    for host in FOREIGN_HOSTS:
        status, _headers, body = get(ports["fn"], "/health", host=host.format(port=ports["fn"]))
        assert status == 403 and b"healthy" not in body, (host, body)


def test_a_worker_that_cannot_publish_reads_503_within_its_stale_window(
    stack: tuple[Stack, dict[str, int]],
) -> None:
    up, ports = stack
    port = ports["fn"]
    fn = up.worker("fn")
    assert fn is not None
    os.kill(fn["pid"], signal.SIGSTOP)
    try:
        wait_for(lambda: get(port, "/health")[0] == 503, timeout=STALE_WITHIN_S,
                 message="/health to turn 503 once the snapshot is stale")
        status, body = _json(port, "/health")
        assert status == 503 and body["reason"].startswith("no update from worker for "), body
        assert _json(port, "/ready")[0] == 503
        status, metrics = _json(port, "/metrics")
        assert status == 200 and metrics["metrics"]["pid"] == fn["pid"]
        assert metrics["metrics"]["heartbeat_age_seconds"] > 5  # aged by the time nothing was published
        # status says what the port says
        worker = up.wait_worker("fn", lambda w: w["health"].startswith("HTTP 503: no update from worker"),
                                what="shown stale in status")
        assert worker["pid"] == fn["pid"] and worker["state"] == "running"
    finally:
        os.kill(fn["pid"], signal.SIGCONT)
    wait_for(lambda: get(port, "/health")[0] == 200, message="healthy again once it publishes")
    assert up.wait_worker("fn", lambda w: w["health"] == "HTTP 200", what="healthy in status")["pid"] == fn["pid"]


def test_backoff_keeps_the_port_with_503_and_stop_releases_it(tmp_path: Path, state_dir: Path, spawn: Any) -> None:
    port = free_port()
    config = write_config(tmp_path, {
        "fn": {"run": TARGET, "interval": "0.2s", "health_port": port, "grace": "5s", "restart": "always",
               "backoff_initial": "3s"},
    })
    up = Stack(config, state_dir, spawn, tuning=TUNING)
    up.up()
    first = up.wait_worker("fn", lambda w: w["state"] == "running" and w["health"] == "HTTP 200",
                           what="running and healthy")
    assert up.proc is not None
    # Killed from outside twice in a row: restarted at once, then a backoff.
    os.kill(first["pid"], signal.SIGKILL)
    again = up.wait_worker("fn", lambda w: w["state"] == "running" and w["pid"] != first["pid"],
                           what="restarted at once")
    os.kill(again["pid"], signal.SIGKILL)
    up.wait_state("fn", "backoff")
    status, body = _json(port, "/health")
    assert status == 503 and body["reason"].startswith("not running (backoff"), body
    assert _json(port, "/ready")[0] == 503
    assert listening_pid(port, [up.proc.pid]) == up.proc.pid  # the port is kept between processes
    third = up.wait_worker("fn", lambda w: w["state"] == "running" and w["health"] == "HTTP 200",
                           what="running again", timeout=20)
    assert third["pid"] not in (first["pid"], again["pid"])
    assert _json(port, "/metrics")[1]["metrics"]["pid"] == third["pid"]  # the new process's snapshot

    assert up.cli("stop", "fn").returncode == 0
    up.wait_state("fn", "stopped")
    wait_for(lambda: refused(port), message="the health port to be released at stop")
    assert up.cli("down").returncode == 0
    assert up.proc.wait(timeout=20) == 0


def test_an_operators_stop_drains_with_ready_503_while_the_worker_runs(
    tmp_path: Path, state_dir: Path, spawn: Any
) -> None:
    port = free_port()
    config = write_config(tmp_path, {
        "fn": {"run": TARGET, "interval": "0.2s", "health_port": port, "drain_delay": "3s", "grace": "10s",
               "restart": "never"},
    })
    up = Stack(config, state_dir, spawn, tuning=TUNING)
    up.up()
    running = up.wait_worker("fn", lambda w: w["state"] == "running" and w["health"] == "HTTP 200",
                             what="running and healthy")
    stopper = subprocess.Popen([*PROCGUARD, "stop", "fn", "-c", str(up.config)], env=up.env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: get(port, "/ready")[0] == 503, message="/ready 503 once the drain starts")
        status, body = _json(port, "/ready")
        assert alive(running["pid"])  # still draining
        assert status == 503 and body["reason"].startswith("stopping"), body
        assert stopper.wait(timeout=30) == 0
    finally:
        if stopper.poll() is None:
            stopper.kill()
            stopper.wait()
    last = up.wait_state("fn", "stopped")["last_exit"]
    assert last["reason"] == "stopped" and last["runtime_seconds"] >= 3, last
