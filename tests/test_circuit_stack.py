"""The example stack under ``procguard up``: the collector's API circuit opens when the api stops, and closes.

Real processes in a private state directory with free ports: the api (a
command) and the collector (``run = examples.analyticbot.collector:collect``,
whose health port the supervisor answers from the snapshots the collector
publishes). ``procguard stop api``: the collector's circuit ``api`` opens,
its /health stays 200 and names it, /metrics reads state 2, no call reaches
for the api while it is open, the collector is not restarted, and
``status --json`` (what the status page draws) shows the open circuit.
``procguard start api``: the trial call succeeds and the circuit closes.
"""

from __future__ import annotations

import http.client
import json
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from .helpers import REPO_ROOT, free_port, wait_for
from .supervisor_workers.stackkit import Stack, write_config

#: Long enough that the window the test reads "no calls while open" in has no trial call.
RESET_TIMEOUT_S = 6.0


def _get(port: int, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def _circuit(port: int) -> dict[str, Any] | None:
    status, body = _get(port, "/metrics")
    if status != 200:
        return None
    circuits = json.loads(body).get("circuits") or []
    return next((c for c in circuits if c["name"] == "api"), None)


def _state_gauge(port: int) -> float | None:
    status, body = _get(port, "/metrics?format=prometheus")
    assert status == 200, body
    for family in text_string_to_metric_families(body):
        if family.name == "procguard_circuit_state":
            for sample in family.samples:
                if sample.labels.get("circuit") == "api" and sample.labels.get("worker") == "collector":
                    return sample.value
    return None


def _calls(circuit: dict[str, Any]) -> int:
    """Calls that went out to the api (let through), successful or not."""
    return int(circuit["calls"]["success"] + circuit["calls"]["failure"])


def test_collector_circuit_opens_while_the_api_is_stopped_and_closes_when_it_is_back(tmp_path, spawn):
    api_port, health_port = free_port(), free_port()
    data = tmp_path / "data"
    config = write_config(
        tmp_path,
        {
            "api": {"command": f"python3 -m examples.analyticbot.api --port {api_port}", "max_runtime": 0},
            "collector": {
                "run": "examples.analyticbot.collector:collect",
                "interval": "0.2s",
                "health_port": health_port,
                "depends_on": ["api"],
            },
        },
        project="analyticbot",
        defaults={
            "cwd": str(REPO_ROOT),
            "grace": "5s",
            "env": {
                "ANALYTICBOT_DATA_DIR": str(data),
                "ANALYTICBOT_API_URL": f"http://127.0.0.1:{api_port}",
                "ANALYTICBOT_API_FAILURES": "2",
                "ANALYTICBOT_API_RESET_TIMEOUT": f"{RESET_TIMEOUT_S}s",
            },
        },
    )
    stack = Stack(config, tmp_path / "state", spawn, project="analyticbot")
    stack.up()
    collector = stack.wait_state("collector", "running", timeout=30)
    wait_for(lambda: (c := _circuit(health_port)) and c["state"] == "closed" and c["calls"]["success"] >= 6,
             timeout=30, message=lambda: f"collector calling the api: {_circuit(health_port)}; {stack.output()[-2000:]}")

    stopped = stack.cli("stop", "api")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr

    # The circuit opens; /health stays 200 and says why; /metrics state 2.
    opened = wait_for(lambda: (c := _circuit(health_port)) and c["state"] == "open" and c,
                      message=lambda: f"the api circuit open: {_circuit(health_port)}")
    status, body = _get(health_port, "/health")
    assert status == 200, body
    reason = json.loads(body)["reason"]
    assert reason.startswith("degraded: circuit 'api' open after 2 failures in a row (last: CollectionError: ")
    assert "next trial call in" in reason
    assert _state_gauge(health_port) == 2.0

    # No call goes out while it is open: refusals go up, calls do not (the window is shorter than the
    # reset timeout, and retry_in_seconds going down shows no trial call came in between).
    later = wait_for(lambda: (c := _circuit(health_port)) and c["calls"]["rejected"] >= opened["calls"]["rejected"] + 5
                     and c, message=lambda: f"refused calls while open: {_circuit(health_port)}")
    assert later["state"] == "open"
    assert later["retry_in_seconds"] < opened["retry_in_seconds"]
    assert _calls(later) == _calls(opened)

    # The collector is alive and was never restarted for it; status --json shows the open circuit.
    status_now = stack.worker("collector")
    assert status_now is not None
    assert (status_now["pid"], status_now["restarts"]) == (collector["pid"], 0)
    assert status_now["health"] == "HTTP 200"
    (shown,) = status_now["circuits"]
    assert (shown["name"], shown["state"]) == ("api", "open")

    # The api comes back: the trial call after the reset timeout closes the circuit.
    started = stack.cli("start", "api")
    assert started.returncode == 0, started.stdout + started.stderr
    closed = wait_for(lambda: (c := _circuit(health_port)) and c["state"] == "closed" and c,
                      timeout=RESET_TIMEOUT_S + 20, message=lambda: f"the api circuit closed: {_circuit(health_port)}")
    assert closed["calls"]["success"] > opened["calls"]["success"]
    assert json.loads(_get(health_port, "/health")[1]) == {"status": "ok", "reason": "healthy"}
    assert _state_gauge(health_port) == 0.0
    final = stack.worker("collector")
    assert final is not None and (final["pid"], final["restarts"]) == (collector["pid"], 0)
    assert "circuit 'api' (pid " in stack.output()  # the state changes are in the worker's log

    down = stack.cli("down")
    assert down.returncode == 0, down.stdout + down.stderr
