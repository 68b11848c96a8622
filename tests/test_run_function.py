"""``procguard run package.module:function``: the iteration loop, end to end.

Each test writes a small target module into its tmp dir and runs a real
``procguard run`` there (the current directory is importable, as with
``python -m``). The target records what happened in files, which the test
reads after (or while) the runner runs.
"""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import textwrap
import urllib.request
from pathlib import Path

import pytest

from procguard.reasons import ExitStatus

from .helpers import PROCGUARD, free_port, wait_for, wait_for_file

RUN = [*PROCGUARD, "run"]

TARGETS = '''
import asyncio, json, os, sys, time

HERE = os.path.dirname(os.path.abspath(__file__))

def _log(event, **extra):
    with open(os.path.join(HERE, "events.jsonl"), "a") as f:
        f.write(json.dumps({"event": event, "t": time.monotonic(), "pid": os.getpid(), **extra}) + "\\n")

def plain():
    _log("plain")

def with_manager(manager):
    _log("with_manager", iterations=manager.iterations, type=type(manager).__name__)

async def coro(manager):
    await asyncio.sleep(0.01)
    _log("coro", iterations=manager.iterations)

def always_fails():
    _log("fail")
    raise ValueError("the upstream API said no")

_calls = []
def fails_every_other():
    _calls.append(1)
    _log("flaky", n=len(_calls))
    if len(_calls) % 2:
        raise ValueError("odd call")

def slow_iteration():
    _log("begin")
    time.sleep(0.5)
    _log("end")

def stuck():
    time.sleep(30)

def busy():
    end = time.monotonic() + 0.2
    while time.monotonic() < end:
        pass

def leaky():
    global _hoard
    _hoard = globals().get("_hoard", [])
    _hoard.append(b"x" * (2 * 1024 * 1024))  # 20 MB/s at a 0.1 s interval
    _log("leak", mb=2 * len(_hoard))
'''


def setup_targets(tmp_path: Path) -> Path:
    (tmp_path / "targets_mod.py").write_text(textwrap.dedent(TARGETS))
    return tmp_path / "events.jsonl"


def events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run(spawn, tmp_path: Path, *args: str) -> subprocess.Popen[bytes]:
    return spawn([*RUN, *args], cwd=tmp_path)


def finish(proc: subprocess.Popen[bytes], timeout: float = 60) -> tuple[int, str]:
    _out, err = proc.communicate(timeout=timeout)
    return proc.returncode, err.decode(errors="replace")


def test_once_runs_one_iteration_and_exits_0(spawn, state_dir, tmp_path):
    log = setup_targets(tmp_path)
    status, err = finish(run(spawn, tmp_path, "targets_mod:plain", "--once", "--health-port", "0"))
    assert status == ExitStatus.OK, err
    assert [e["event"] for e in events(log)] == ["plain"]
    assert "completed" in err


def test_max_iterations_and_interval(spawn, state_dir, tmp_path):
    log = setup_targets(tmp_path)
    status, err = finish(run(
        spawn, tmp_path, "targets_mod:with_manager", "--interval", "0.2s", "--max-iterations", "4",
        "--health-port", "0",
    ))
    assert status == ExitStatus.MAX_ITERATIONS, err
    seen = events(log)
    assert [e["iterations"] for e in seen] == [1, 2, 3, 4]  # the manager was passed in
    assert {e["type"] for e in seen} == {"ProcessManager"}
    gaps = [b["t"] - a["t"] for a, b in itertools.pairwise(seen)]
    assert min(gaps) >= 0.18, gaps  # slept the interval between iterations


def test_interval_is_in_minutes_when_bare(spawn, state_dir, tmp_path):
    log = setup_targets(tmp_path)
    proc = run(spawn, tmp_path, "targets_mod:plain", "--interval", "1", "--health-port", "0")
    wait_for(lambda: events(log), message="the first iteration")
    proc.send_signal(signal.SIGTERM)  # wakes the one-minute sleep at once
    status, err = finish(proc)
    assert status == 128 + signal.SIGTERM, err
    assert len(events(log)) == 1


def test_async_function(spawn, state_dir, tmp_path):
    log = setup_targets(tmp_path)
    status, err = finish(run(
        spawn, tmp_path, "targets_mod:coro", "--interval", "0", "--max-iterations", "3", "--health-port", "0",
    ))
    assert status == ExitStatus.MAX_ITERATIONS, err
    assert [e["iterations"] for e in events(log)] == [1, 2, 3]


def test_consecutive_failures_stop_the_worker(spawn, state_dir, tmp_path):
    log = setup_targets(tmp_path)
    status, err = finish(run(
        spawn, tmp_path, "targets_mod:always_fails", "--interval", "0", "--max-failures", "3",
        "--health-port", "0",
    ))
    assert status == ExitStatus.ITERATION_FAILURES, err
    assert len(events(log)) == 3
    assert "Traceback" in err and "the upstream API said no" in err  # logged with its traceback
    assert "iteration_failures" in err


def test_a_success_resets_the_failure_count(spawn, state_dir, tmp_path):
    log = setup_targets(tmp_path)
    status, err = finish(run(
        spawn, tmp_path, "targets_mod:fails_every_other", "--interval", "0", "--max-failures", "2",
        "--max-iterations", "6", "--health-port", "0",
    ))
    assert status == ExitStatus.MAX_ITERATIONS, err  # never two failures in a row
    assert len(events(log)) == 6


def test_once_with_a_failing_iteration_exits_1(spawn, state_dir, tmp_path):
    setup_targets(tmp_path)
    status, err = finish(run(spawn, tmp_path, "targets_mod:always_fails", "--once", "--health-port", "0"))
    assert status == ExitStatus.ERROR, err


def test_heartbeat_timeout_stops_a_stuck_iteration(spawn, state_dir, tmp_path):
    setup_targets(tmp_path)
    status, err = finish(run(
        spawn, tmp_path, "targets_mod:stuck", "--interval", "0", "--heartbeat-timeout", "1s", "--grace", "1s",
        "--health-port", "0",
    ))
    assert status in (ExitStatus.HEARTBEAT_TIMEOUT, ExitStatus.GRACE_EXCEEDED), err
    assert "heartbeat_timeout" in err


def test_sigterm_mid_iteration_finishes_it(spawn, state_dir, tmp_path):
    log = setup_targets(tmp_path)
    proc = run(spawn, tmp_path, "targets_mod:slow_iteration", "--interval", "0", "--health-port", "0")
    wait_for(lambda: any(e["event"] == "begin" for e in events(log)), message="an iteration to begin")
    proc.send_signal(signal.SIGTERM)
    status, err = finish(proc)
    assert status == 128 + signal.SIGTERM, err
    seen = [e["event"] for e in events(log)]
    assert seen.count("begin") == seen.count("end"), seen  # no iteration cut short
    assert seen[-1] == "end"


def test_memory_limit_stops_a_leaking_function(spawn, state_dir, tmp_path):
    setup_targets(tmp_path)
    status, err = finish(run(
        spawn, tmp_path, "targets_mod:leaky", "--interval", "0.1s", "--memory-limit", "100MB",
        "--health-port", "0",
    ))
    assert status == ExitStatus.MEMORY_LIMIT, err
    assert "memory_limit" in err


@pytest.mark.slow
def test_cpu_limit_stops_a_busy_function(spawn, state_dir, tmp_path):
    setup_targets(tmp_path)
    status, err = finish(run(
        spawn, tmp_path, "targets_mod:busy", "--interval", "0", "--cpu-limit", "20", "--cpu-window", "2s",
        "--health-port", "0",
    ))
    assert status == ExitStatus.CPU_LIMIT, err
    assert "cpu_limit" in err


def test_health_endpoint_of_a_function_worker(spawn, state_dir, tmp_path):
    setup_targets(tmp_path)
    port = free_port()
    proc = run(spawn, tmp_path, "targets_mod:plain", "--interval", "10s", "--health-port", str(port))

    def health():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
                return response.status, json.loads(response.read())
        except OSError:
            return None

    status, body = wait_for(health, message="/health to answer")
    assert status == 200 and body["reason"] == "healthy"
    proc.send_signal(signal.SIGINT)
    assert finish(proc)[0] == 128 + signal.SIGINT


def test_second_instance_is_refused_and_replace_takes_over(spawn, state_dir, tmp_path):
    log = setup_targets(tmp_path)
    first = run(spawn, tmp_path, "targets_mod:plain", "--interval", "10s", "--health-port", "0")
    wait_for(lambda: events(log), message="the first instance's first iteration")
    status, err = finish(run(spawn, tmp_path, "targets_mod:plain", "--once", "--health-port", "0"))
    assert status == ExitStatus.ALREADY_RUNNING, err
    assert f"PID {first.pid}" in err

    third = run(spawn, tmp_path, "targets_mod:plain", "--interval", "10s", "--replace", "--health-port", "0")
    assert first.wait(timeout=30) == 128 + signal.SIGTERM
    wait_for(lambda: {e["pid"] for e in events(log)} >= {first.pid, third.pid},
             message="the replacing instance's first iteration")
    third.send_signal(signal.SIGTERM)
    assert finish(third)[0] == 128 + signal.SIGTERM


def test_the_worker_process_carries_the_marker(spawn, state_dir, tmp_path):
    (tmp_path / "marker_mod.py").write_text(textwrap.dedent('''
        import os
        def main():
            open("marker.txt", "w").write(os.environ.get("PROCGUARD_INSTANCE", ""))
    '''))
    status, err = finish(run(spawn, tmp_path, "marker_mod:main", "--once", "--name", "mk", "--health-port", "0"))
    assert status == 0, err
    assert wait_for_file(tmp_path / "marker.txt").startswith("mk:")


def test_drain_delay_keeps_working_while_not_ready(spawn, state_dir, tmp_path):
    """On SIGTERM /ready turns 503 at once, iterations go on during the drain, then the worker stops."""
    log = setup_targets(tmp_path)
    port = free_port()
    proc = run(spawn, tmp_path, "targets_mod:plain", "--interval", "0.05s", "--drain-delay", "3s",
               "--health-port", str(port))

    def ready_status():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code
        except OSError:
            return None

    wait_for(lambda: ready_status() == 200, message="/ready 200 before the stop")
    proc.send_signal(signal.SIGTERM)
    wait_for(lambda: ready_status() == 503, message="/ready 503 at once on SIGTERM")
    seen = len(events(log))
    wait_for(lambda: len(events(log)) > seen + 2, message="iterations during the drain")
    status, err = finish(proc)
    assert status == 128 + signal.SIGTERM, err
    assert "draining for 3s" in err
