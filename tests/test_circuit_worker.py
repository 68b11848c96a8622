"""A ProcessManager's circuits on its real HTTP surfaces: /health, /ready, /metrics (JSON and Prometheus).

The manager runs in this process with its health port served the default
way (a responder process reading the published snapshots), so every answer
here went through the shared mapping; the breakers run on a fake clock.
"""

from __future__ import annotations

import http.client
import json

import pytest

from procguard import CircuitOpenError, ProcessManager, UsageError
from procguard.health.shared import age_snapshot, decode_snapshot, encode_snapshot

from .helpers import free_port, wait_for


class FakeClock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def get(port: int, path: str, accept: str | None = None) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Accept": accept} if accept else {})
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def _down() -> None:
    raise ConnectionError("connection refused")


@pytest.fixture
def worker(state_dir):
    manager = ProcessManager(
        "circuits", 0, 0, 0, health_port=free_port(), handle_signals=False, terminate_children=False,
        state_dir=state_dir,
    )
    manager.start()
    yield manager
    manager.shutdown()


def _open(breaker, times: int) -> None:
    for _ in range(times):
        with pytest.raises(ConnectionError):
            breaker.call(_down)


def test_open_circuit_keeps_health_200_names_it_and_ready_follows_required(worker):
    clock = FakeClock()
    port = worker.limits.health_port
    optional = worker.circuit("cache", failure_threshold=2, reset_timeout=30, clock=clock)
    required = worker.circuit("api", failure_threshold=1, reset_timeout=10, required=True, clock=clock)
    assert get(port, "/health") == (200, '{"status":"ok","reason":"healthy"}')

    _open(optional, 2)
    status, body = wait_for(lambda: (r := get(port, "/health")) and "cache" in r[1] and r,
                            message="/health naming the open circuit")
    assert status == 200
    reason = json.loads(body)["reason"]
    assert reason == (
        "degraded: circuit 'cache' open after 2 failures in a row "
        "(last: ConnectionError: connection refused); next trial call in 30.0 s"
    )
    assert get(port, "/ready")[0] == 200  # not required: still ready

    _open(required, 1)
    status, body = wait_for(lambda: (r := get(port, "/ready")) and r[0] == 503 and r,
                            message="/ready 503 with the required circuit open")
    assert json.loads(body) == {
        "status": "not_ready",
        "reason": "required circuit 'api' open after 1 failures in a row "
                  "(last: ConnectionError: connection refused); next trial call in 10.0 s",
    }
    assert get(port, "/health")[0] == 200  # alive all the same

    clock.now += 10
    assert required.call(lambda: "up") == "up"  # the trial succeeds: closed
    wait_for(lambda: get(port, "/ready")[0] == 200, message="/ready 200 once the required circuit closed")


def test_metrics_json_and_prometheus_show_state_and_calls(worker):
    clock = FakeClock()
    port = worker.limits.health_port
    api = worker.circuit("api", failure_threshold=2, reset_timeout=10, clock=clock)
    api.call(lambda: 1)
    _open(api, 2)
    for _ in range(3):
        with pytest.raises(CircuitOpenError):
            api.call(_down)

    def circuits() -> list[dict] | None:
        doc = json.loads(get(port, "/metrics")[1])
        found = doc.get("circuits")
        return found if found and found[0]["calls"]["rejected"] == 3 else None

    (circuit,) = wait_for(circuits, message="the circuit in /metrics JSON")
    assert circuit["name"] == "api" and circuit["state"] == "open" and circuit["required"] is False
    assert circuit["calls"] == {"success": 1, "failure": 2, "rejected": 3}
    assert circuit["failures_in_a_row"] == 2
    assert 0 < circuit["retry_in_seconds"] <= 10.0
    assert circuit["last_failure"] == "ConnectionError: connection refused"

    status, text = get(port, "/metrics?format=prometheus")
    assert status == 200
    assert 'procguard_circuit_state{circuit="api",worker="circuits"} 2.0' in text
    assert 'procguard_circuit_calls_total{circuit="api",result="success",worker="circuits"} 1.0' in text
    assert 'procguard_circuit_calls_total{circuit="api",result="failure",worker="circuits"} 2.0' in text
    assert 'procguard_circuit_calls_total{circuit="api",result="rejected",worker="circuits"} 3.0' in text

    clock.now += 10
    api.call(lambda: 1)
    wait_for(lambda: 'procguard_circuit_state{circuit="api",worker="circuits"} 0.0'
             in get(port, "/metrics?format=prometheus")[1], message="state 0 once closed")


def test_a_worker_without_circuits_keeps_its_documented_json_and_families(worker):
    doc = json.loads(get(worker.limits.health_port, "/metrics")[1])
    assert set(doc) == {"metrics", "health", "runtime"}
    assert "procguard_circuit" not in get(worker.limits.health_port, "/metrics?format=prometheus")[1]


def test_circuit_failures_do_not_stop_the_worker_but_its_own_do(state_dir):
    manager = ProcessManager("failing", 0, 0, 0, max_consecutive_failures=2, handle_signals=False,
                             terminate_children=False, state_dir=state_dir)
    manager.start()
    try:
        api = manager.circuit("api", failure_threshold=2, clock=FakeClock())
        for _ in range(6):  # 2 failures counted by the circuit, then 4 refusals
            try:
                api.call(_down)
            except Exception as error:
                try:
                    raise RuntimeError("iteration failed") from error  # wrapped by the worker's code
                except RuntimeError as wrapped:
                    manager.record_failure(wrapped)
        assert not manager.is_stopping
        assert manager.snapshot().failed_iterations == 6
        manager.record_failure(ValueError("the worker's own bug"))
        manager.record_failure(ValueError("the worker's own bug"))
        assert manager.is_stopping
        assert manager.stop_outcome.reason.value == "iteration_failures"
    finally:
        manager.shutdown()


def test_circuit_is_one_per_name(state_dir):
    manager = ProcessManager("names", handle_signals=False, single_instance=False)
    api = manager.circuit("api", failure_threshold=3, reset_timeout="1m")
    assert manager.circuit("api", failure_threshold=3, reset_timeout=60) is api
    assert manager.circuits == (api,)
    with pytest.raises(UsageError, match=r"circuit 'api' is already registered with other settings "
                                         r"\(failure_threshold=3\)"):
        manager.circuit("api", failure_threshold=4, reset_timeout=60)
    from procguard import CircuitBreaker

    with pytest.raises(UsageError, match="already registered"):
        manager.add_circuit(CircuitBreaker("api"))
    other = manager.add_circuit(CircuitBreaker("db"))
    assert manager.circuits == (api, other)


def test_circuits_survive_the_shared_mapping_and_age_with_it(worker):
    clock = FakeClock()
    api = worker.circuit("api", failure_threshold=1, reset_timeout=10, required=True, clock=clock)
    _open(api, 1)
    snap = decode_snapshot(encode_snapshot(worker.snapshot()))
    assert snap.circuits == worker.snapshot().circuits
    (circuit,) = age_snapshot(snap, 4.0, 60.0).circuits
    assert circuit.retry_in_seconds == pytest.approx(6.0)
    assert circuit.state == "open" and circuit.required
