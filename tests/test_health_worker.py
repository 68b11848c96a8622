"""Health served for real worker processes: staleness, a held GIL, drain order, lifetime."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from .conftest import Spawn
from .helpers import PYTHON, free_port, read_output, wait_for

# A worker without ProcessManager: serves its own snapshot source in process
# mode; SIGUSR2 makes its main thread hold the GIL for 3 s (a C call through
# ctypes.PyDLL keeps it), which no Python thread of it can interrupt.
GIL_WORKER = r"""
import ctypes, os, signal, sys, threading, time
from procguard.health.server import serve_health
from procguard.snapshot import HealthStatus, WorkerSnapshot

started = time.monotonic()
beat = [started]
hold = [False]

def source():
    return WorkerSnapshot(name="gil", pid=os.getpid(), health=HealthStatus(True), ready=HealthStatus(True),
                          uptime_seconds=time.monotonic() - started,
                          heartbeat_age_seconds=time.monotonic() - beat[0])

def start():
    return serve_health(source, port=0, stale_after_s=1.0, publish_interval_s=0.05)

if sys.argv[1] == "thread-started":
    box = []
    t = threading.Thread(target=lambda: box.append(start()))
    t.start(); t.join()
    server = box[0]
else:
    server = start()
signal.signal(signal.SIGUSR2, lambda *_: hold.__setitem__(0, True))
print(server.port, server.responder_pid, flush=True)
libc = ctypes.PyDLL(None)
while True:
    beat[0] = time.monotonic()
    if hold[0]:
        hold[0] = False
        libc.sleep(3)  # holds the GIL
    sum(range(2000))
"""

# A worker under ProcessManager with a 1 s heartbeat timeout and a 1 s drain.
# SIGUSR1 makes its loop stall (no heartbeat, no new iteration).
MANAGED_WORKER = r"""
import signal, sys, time
from procguard import ProcessManager

stall = [False]
signal.signal(signal.SIGUSR1, lambda *_: stall.__setitem__(0, True))
manager = ProcessManager(None, 0, 0, 0, heartbeat_timeout_s=1.0, sample_interval_s=0.1,
                         health_port=int(sys.argv[1]), drain_delay_s=1.0, grace_s=10,
                         single_instance=False)
manager.start()
print("started", flush=True)
while manager.should_continue():
    manager.heartbeat()
    while stall[0]:
        time.sleep(0.05)
    manager.sleep(0.02)
manager.shutdown()
sys.exit(manager.exit_status)
"""


def get(port: int, path: str, timeout: float = 10.0) -> tuple[int, dict[str, object]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def try_get(port: int, path: str) -> tuple[int, dict[str, object]] | None:
    try:
        return get(port, path)
    except OSError:
        return None


def start_gil_worker(spawn: Spawn, how: str = "main-started") -> tuple[subprocess.Popen[bytes], int, int]:
    proc = spawn([PYTHON, "-c", GIL_WORKER, how])
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        pytest.fail(f"worker did not start:\n{read_output(proc)}")
    port, responder = (int(x) for x in line.split())
    return proc, port, responder


def test_worker_holding_the_gil_reads_unhealthy_and_still_answers(spawn: Spawn) -> None:
    proc, port, _ = start_gil_worker(spawn)
    wait_for(lambda: (try_get(port, "/health") or (0,))[0] == 200, message="/health 200")
    proc.send_signal(signal.SIGUSR2)
    _status, body = wait_for(
        lambda: (r := get(port, "/health", timeout=2.0)) and r[0] == 503 and r,
        message="/health to report the stuck worker",
    )
    assert body["status"] == "unhealthy"
    assert "no update from worker" in str(body["reason"])
    assert get(port, "/ready", timeout=2.0)[0] == 503
    metrics = get(port, "/metrics", timeout=2.0)[1]
    assert metrics["health"]["is_healthy"] is False  # type: ignore[index]
    assert metrics["metrics"]["heartbeat_age_seconds"] > 1.0  # type: ignore[index,operator]
    # the hold ends after 3 s: healthy again without any restart
    wait_for(lambda: get(port, "/health")[0] == 200, message="/health to recover")
    assert proc.poll() is None


@pytest.mark.parametrize("how", ["main-started", "thread-started"])
def test_responder_dies_with_its_worker(spawn: Spawn, how: str) -> None:
    proc, port, responder = start_gil_worker(spawn, how)
    assert psutil.Process(responder).ppid() == proc.pid
    wait_for(lambda: try_get(port, "/health") is not None, message="/health answering")
    proc.kill()
    proc.wait(timeout=10)

    def responder_gone() -> bool:
        try:
            return psutil.Process(responder).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    wait_for(responder_gone, message=f"responder {responder} to exit after its worker")
    wait_for(lambda: try_get(port, "/health") is None, message="the port to close")


def test_managed_worker_endpoints(spawn: Spawn) -> None:
    port = free_port()
    proc = spawn([PYTHON, "-c", MANAGED_WORKER, str(port)])
    assert proc.stdout is not None and proc.stdout.readline() == b"started\n", read_output(proc)
    # the first snapshot may predate the end of start() ("not started") until the next publish
    _status, body = wait_for(lambda: (r := try_get(port, "/health")) and r[0] == 200 and r,
                            message="/health 200")
    assert body == {"status": "ok", "reason": "healthy"}
    assert get(port, "/ready")[0] == 200
    metrics = get(port, "/metrics")[1]
    assert metrics["metrics"]["pid"] == proc.pid  # type: ignore[index]
    assert metrics["metrics"]["memory_mb"] > 1  # type: ignore[index,operator]
    proc.kill()  # skip the 1 s drain at teardown


def test_managed_worker_stall_turns_503_within_timeout_plus_one_sample(spawn: Spawn) -> None:
    port = free_port()
    proc = spawn([PYTHON, "-c", MANAGED_WORKER, str(port)])
    assert proc.stdout is not None and proc.stdout.readline() == b"started\n", read_output(proc)
    wait_for(lambda: (try_get(port, "/health") or (0,))[0] == 200, message="/health 200")
    proc.send_signal(signal.SIGUSR1)
    stalled_at = time.monotonic()
    # heartbeat timeout 1 s + one 0.1 s sample + one 0.25 s publish; the rest is slack for a busy machine
    _status, body = wait_for(lambda: (r := get(port, "/health")) and r[0] == 503 and r, timeout=6.0,
                            interval=0.05, message="/health 503 after the loop stalled")
    elapsed = time.monotonic() - stalled_at
    assert elapsed >= 0.9, f"turned unhealthy {elapsed:.2f}s after the stall, before the timeout"
    assert "heartbeat" in str(body["reason"])
    proc.kill()  # the loop is stuck by design; no graceful stop to wait for


def test_managed_worker_drains_not_ready_before_exit(spawn: Spawn) -> None:
    port = free_port()
    proc = spawn([PYTHON, "-c", MANAGED_WORKER, str(port)])
    assert proc.stdout is not None and proc.stdout.readline() == b"started\n", read_output(proc)
    wait_for(lambda: (try_get(port, "/ready") or (0,))[0] == 200, message="/ready 200")
    proc.send_signal(signal.SIGTERM)
    _status, body = wait_for(lambda: (r := try_get(port, "/ready")) and r[0] == 503 and r,
                            interval=0.02, message="/ready 503 during the drain")
    assert proc.poll() is None, "the worker exited before /ready reported the drain"
    assert body["status"] == "not_ready"
    assert get(port, "/health")[0] == 503  # stopping counts as unhealthy (a stopping worker takes no new work)
    assert proc.wait(timeout=20) == 128 + signal.SIGTERM
    wait_for(lambda: try_get(port, "/ready") is None, message="the port to close after exit")


def test_gil_worker_source_is_isolated_from_environment(spawn: Spawn) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), API_KEY="sk-live-abcdef")
    proc = spawn([PYTHON, "-c", GIL_WORKER, "main-started", "--password=opensesame"], env=env)
    assert proc.stdout is not None
    port = int(proc.stdout.readline().split()[0])
    for path in ("/health", "/ready", "/metrics", "/metrics?format=prometheus"):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", path)
        body = conn.getresponse().read()
        conn.close()
        assert b"sk-live" not in body and b"opensesame" not in body
