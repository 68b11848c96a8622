"""A program's own gauges (``ProcessManager.set_gauge``): on /metrics in JSON and Prometheus, through the
shared snapshot, and refused when they cannot be named or are not numbers."""

from __future__ import annotations

import http.client
import json
import math
import os

import pytest

from procguard import ProcessManager
from procguard.errors import UsageError
from procguard.health.exposition import render_prometheus
from procguard.health.shared import (
    PublishedView,
    SnapshotPublisher,
    SnapshotReader,
    create_buffer,
    encode_snapshot,
)

from .conftest import Spawn
from .helpers import PYTHON, free_port, python_env, read_output, wait_for

# A worker that counts up a gauge once per iteration and serves its health itself.
GAUGE_WORKER = r"""
import os, sys
from procguard import ProcessManager
m = ProcessManager(name="gauged", health_port=int(sys.argv[1]), single_instance=False, grace_s=1)
m.start()
print("started", flush=True)
n = 0
while m.should_continue():
    m.heartbeat()
    n += 1
    m.set_gauge("queue_depth", 7)
    m.set_gauge("jobs_done", n)
    m.sleep(0.02)
sys.exit(m.shutdown())
"""


def _get(port: int, path: str, accept: str | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers={"Accept": accept} if accept else {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_a_worker_gauge_is_on_its_metrics_in_json_and_prometheus(spawn: Spawn) -> None:
    port = free_port()
    proc = spawn([PYTHON, "-c", GAUGE_WORKER, str(port)], env=python_env(PROCGUARD_INSTANCE_INDEX="3"))
    assert proc.stdout is not None and proc.stdout.readline() == b"started\n", read_output(proc)

    def gauges() -> dict[str, float] | None:
        try:
            status, body = _get(port, "/metrics")
        except OSError:
            return None
        found = json.loads(body).get("gauges") if status == 200 else None
        return found if found and found.get("jobs_done", 0) > 1 else None

    found = wait_for(gauges, message="gauges on /metrics")
    assert found["queue_depth"] == 7.0
    status, text = _get(port, "/metrics?format=prometheus")
    assert status == 200
    lines = text.decode().splitlines()
    assert "# TYPE queue_depth gauge" in lines
    assert 'queue_depth{copy="3",worker="gauged"} 7.0' in lines
    proc.kill()


def test_gauges_travel_through_the_shared_snapshot_and_go_unknown_when_stale() -> None:
    manager = ProcessManager(name="w", handle_signals=False, single_instance=False)
    manager.set_gauge("queue_depth", 12)
    manager.set_gauge("queue_depth", 13.5)  # the latest value wins
    fd, buffer = create_buffer()
    try:
        SnapshotPublisher(buffer).publish(encode_snapshot(manager.snapshot()))
        view = PublishedView(SnapshotReader(buffer), stale_after_s=0.2)
        assert view.fresh_gauges() == {"queue_depth": 13.5}
        assert view.current().gauge("queue_depth") == 13.5
        wait_for(lambda: view.fresh_gauges() is None, timeout=3, message="the gauges to go stale")
    finally:
        buffer.close()
        os.close(fd)


def test_without_gauges_metrics_keep_their_documented_keys() -> None:
    snap = ProcessManager(name="w", handle_signals=False, single_instance=False).snapshot()
    assert "gauges" not in snap.to_metrics_json()
    assert b"queue_depth" not in render_prometheus([snap])[0]


@pytest.mark.parametrize("name", ["", "1st", "queue-depth", "procguard_healthy", "a b", 5])
def test_a_gauge_name_that_is_no_metric_name_is_refused(name: object) -> None:
    manager = ProcessManager(name="w", handle_signals=False, single_instance=False)
    with pytest.raises(UsageError, match="is not a gauge name"):
        manager.set_gauge(name, 1)  # type: ignore[arg-type]
    assert manager.gauges == {}


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_gauge_value_must_be_finite(value: float) -> None:
    manager = ProcessManager(name="w", handle_signals=False, single_instance=False)
    with pytest.raises(UsageError, match="not a finite number"):
        manager.set_gauge("queue_depth", value)
    manager.set_gauge("queue_depth", 1)
    for bad in (value, "many", None):
        with pytest.raises(UsageError, match="not a finite number"):
            manager.set_gauge("queue_depth", bad)  # type: ignore[arg-type]  # a known name too
    assert manager.gauges == {"queue_depth": 1.0}
