"""ProcessManager end to end: each stop reason reached for real in a child process.

The child is tests/manager_workers/worker.py; it appends its events to a file
(``begin N``, ``end N``, ``cleanup N``, ``exit STATUS REASON``) and the tests
wait on that file, never on a bare sleep.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from procguard.instances.marker import new_marker
from procguard.instances.statedir import namespace_of
from procguard.reasons import ExitStatus

from .helpers import PYTHON, wait_for

WORKER = Path(__file__).parent / "manager_workers" / "worker.py"

#: Fast defaults for the tests: sample often, no CPU/memory limit unless a test sets one.
FAST = {
    "name": None,
    "max_runtime_hours": 0,
    "memory_limit_mb": 0,
    "cpu_limit_percent": 0,
    "sample_interval_s": 0.05,
    "grace_s": 20,
}

RunWorker = Callable[..., tuple[subprocess.Popen[bytes], Path]]


@pytest.fixture
def run_worker(spawn: Any, tmp_path: Path) -> RunWorker:
    counter = iter(range(1000))

    def _run(**config: Any) -> tuple[subprocess.Popen[bytes], Path]:
        out = tmp_path / f"events-{next(counter)}.txt"
        kwargs = {**FAST, **config.pop("kwargs", {})}
        payload = {"out": str(out), "kwargs": kwargs, **config}
        with open(out.with_suffix(".log"), "wb") as log:
            proc = spawn([PYTHON, str(WORKER), json.dumps(payload)], stdout=log, stderr=subprocess.STDOUT)
        proc.log_path = out.with_suffix(".log")  # type: ignore[attr-defined]
        return proc, out

    return _run


def events(out: Path) -> list[str]:
    return out.read_text().splitlines() if out.exists() else []


def worker_log(proc: subprocess.Popen[bytes]) -> str:
    path: Path = proc.log_path  # type: ignore[attr-defined]
    return path.read_text(errors="replace") if path.exists() else ""


def finish(proc: subprocess.Popen[bytes], timeout: float = 30) -> tuple[int, str]:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"worker did not exit within {timeout}s:\n{worker_log(proc)}")
    return proc.returncode, worker_log(proc)


def wait_event(out: Path, line: str, proc: subprocess.Popen[bytes]) -> None:
    def seen() -> bool:
        if line in events(out):
            return True
        if proc.poll() is not None:
            raise AssertionError(f"worker exited ({proc.returncode}) before {line!r}:\n{worker_log(proc)}")
        return False

    wait_for(seen, message=lambda: f"{line!r} in {events(out)}")


def test_max_iterations_stops_with_its_status(run_worker: RunWorker) -> None:
    proc, out = run_worker(kwargs={"max_iterations": 3})
    status, log = finish(proc)
    assert status == ExitStatus.MAX_ITERATIONS, log
    lines = events(out)
    assert [x for x in lines if x.startswith("begin")] == [f"begin {i} ready=1" for i in (1, 2, 3)]
    assert lines[-1] == "exit 81 max_iterations"
    assert "stopping: max_iterations (3 iterations done, the limit)" in log


def test_max_runtime_stops_between_iterations(run_worker: RunWorker) -> None:
    proc, out = run_worker(kwargs={"max_runtime_hours": "0.5s"}, iteration_s=0.02)
    status, log = finish(proc)
    assert status == ExitStatus.MAX_RUNTIME, log
    lines = events(out)
    assert lines[-1] == "exit 80 max_runtime"
    begins = [x for x in lines if x.startswith("begin")]
    ends = [x for x in lines if x.startswith("end")]
    assert len(begins) == len(ends) > 1  # every iteration begun was completed


def test_requested_stop_exits_zero(run_worker: RunWorker) -> None:
    proc, out = run_worker(request_stop_at=2)
    status, log = finish(proc)
    assert status == ExitStatus.OK, log
    lines = events(out)
    assert "end 2" in lines and "begin 3 ready=0" not in lines and not any(x.startswith("begin 3") for x in lines)
    assert lines[-1] == "exit 0 requested"


def test_sigterm_finishes_in_flight_iteration_then_exits_143(run_worker: RunWorker) -> None:
    proc, out = run_worker(mode="with", iteration_s=1.0, cleanups=True)
    wait_event(out, "begin 1 ready=1", proc)
    proc.send_signal(signal.SIGTERM)
    status, log = finish(proc)
    assert status == 128 + signal.SIGTERM, log
    lines = events(out)
    assert "end 1" in lines, lines  # the in-flight iteration completed
    assert not any(x.startswith("begin 2") for x in lines), lines
    assert lines[-1] == "exit 143 signal"
    assert "stopping: signal (received SIGTERM)" in log


def test_cleanup_callbacks_run_lifo_even_when_one_raises(run_worker: RunWorker) -> None:
    proc, out = run_worker(kwargs={"max_iterations": 1}, cleanups=True)
    status, log = finish(proc)
    assert status == ExitStatus.MAX_ITERATIONS, log
    lines = [x for x in events(out) if x.startswith("cleanup")]
    assert lines == ["cleanup 3", "cleanup 2", "cleanup 1"]
    assert "cleanup" in log and "cleanup 2 fails on purpose" in log


def test_slow_cleanup_is_abandoned_after_its_timeout(run_worker: RunWorker) -> None:
    proc, out = run_worker(
        kwargs={"max_iterations": 1, "cleanup_timeout_s": 0.5}, cleanups=True, slow_cleanup=True
    )
    status, log = finish(proc)
    assert status == ExitStatus.MAX_ITERATIONS, log
    lines = [x for x in events(out) if x.startswith("cleanup")]
    assert lines == ["cleanup 4 start", "cleanup 3", "cleanup 2", "cleanup 1"]
    assert "still running after 0.5s" in log


def test_async_worker_wakes_from_sleep_async_on_sigterm(run_worker: RunWorker) -> None:
    proc, out = run_worker(mode="async", sleep_s=120, cleanups=True)
    wait_event(out, "end 1", proc)
    proc.send_signal(signal.SIGTERM)
    status, log = finish(proc, timeout=20)  # far less than the 120 s sleep
    assert status == 128 + signal.SIGTERM, log
    lines = events(out)
    assert [x for x in lines if x.startswith("cleanup")] == ["cleanup 3", "cleanup 2", "cleanup 1"]
    assert lines[-1] == "exit 143 signal"


def test_sync_sleep_wakes_on_sigint(run_worker: RunWorker) -> None:
    proc, out = run_worker(sleep_s=120)
    wait_event(out, "end 1", proc)
    proc.send_signal(signal.SIGINT)
    status, log = finish(proc, timeout=20)
    assert status == 128 + signal.SIGINT, log
    assert events(out)[-1] == "exit 130 signal"


def test_second_signal_forces_immediate_exit(run_worker: RunWorker) -> None:
    proc, out = run_worker(iteration_s=60, cleanups=True)
    wait_event(out, "begin 1 ready=1", proc)
    proc.send_signal(signal.SIGTERM)
    # The first signal must be handled before the second is sent (the kernel merges pending ones).
    wait_for(lambda: "stopping: signal" in worker_log(proc), message="the first signal to be logged")
    proc.send_signal(signal.SIGTERM)
    status, log = finish(proc, timeout=20)
    assert status == ExitStatus.GRACE_EXCEEDED, log
    lines = events(out)
    assert "end 1" not in lines and not any(x.startswith("cleanup") for x in lines)
    assert "second stop signal (SIGTERM)" in log


def test_memory_leak_stops_gracefully_at_the_soft_limit(run_worker: RunWorker) -> None:
    # 2 MB per ~20 ms iteration (about 100 MB/s): with 2 strikes at 50 ms the soft limit
    # acts well before the 400 MB ceiling.
    proc, out = run_worker(
        kwargs={"memory_limit_mb": 100, "memory_hard_limit_mb": 400, "memory_strikes": 2},
        leak_mb=2,
        iteration_s=0.02,
    )
    status, log = finish(proc)
    assert status == ExitStatus.MEMORY_LIMIT, log
    lines = events(out)
    assert lines[-1] == "exit 82 memory_limit"
    assert "over the limit 100.0 MB for 2 consecutive samples" in log
    begins = [x for x in lines if x.startswith("begin")]
    assert len(begins) == len([x for x in lines if x.startswith("end")])


def test_hard_memory_ceiling_exits_at_once(run_worker: RunWorker) -> None:
    # Far more strikes than the leak leaves time for: only the hard ceiling can act.
    proc, out = run_worker(
        kwargs={"memory_limit_mb": 60, "memory_hard_limit_mb": 120, "memory_strikes": 10_000},
        leak_mb=20,
        iteration_s=0.05,
        cleanups=True,
    )
    status, log = finish(proc)
    assert status == ExitStatus.MEMORY_HARD_LIMIT, log
    assert "over the hard ceiling 120.0 MB" in log
    lines = events(out)
    assert not any(x.startswith(("exit", "cleanup")) for x in lines)  # no graceful path


def test_cpu_burner_stops_at_the_cpu_limit(run_worker: RunWorker) -> None:
    proc, out = run_worker(
        kwargs={"cpu_limit_percent": 25, "cpu_window_s": 1.0},
        iteration_s=0.1,
        burn=True,
    )
    status, log = finish(proc)
    assert status == ExitStatus.CPU_LIMIT, log
    assert events(out)[-1] == "exit 83 cpu_limit"
    assert "over the limit 25%" in log


def test_idle_worker_is_not_stopped_by_the_cpu_limit(run_worker: RunWorker) -> None:
    proc, _out = run_worker(
        kwargs={"cpu_limit_percent": 50, "cpu_window_s": 0.5, "max_runtime_hours": "2s"},
        sleep_s=0.05,
    )
    status, log = finish(proc)
    assert status == ExitStatus.MAX_RUNTIME, log


def test_heartbeat_timeout_stops_after_the_stuck_iteration(run_worker: RunWorker) -> None:
    proc, out = run_worker(kwargs={"heartbeat_timeout_s": 0.5}, block_at=2, block_s=2.0)
    status, log = finish(proc)
    assert status == ExitStatus.HEARTBEAT_TIMEOUT, log
    lines = events(out)
    assert "end 2" in lines and not any(x.startswith("begin 3") for x in lines)
    assert "no heartbeat for" in log


def test_long_sleep_counts_as_heartbeat(run_worker: RunWorker) -> None:
    proc, _out = run_worker(kwargs={"heartbeat_timeout_s": 0.3, "max_iterations": 2}, sleep_s=1.0)
    status, log = finish(proc)
    assert status == ExitStatus.MAX_ITERATIONS, log


def test_graceful_stop_overrunning_grace_exits_87(run_worker: RunWorker) -> None:
    proc, out = run_worker(kwargs={"grace_s": 0.5}, iteration_s=60, cleanups=True)
    wait_event(out, "begin 1 ready=1", proc)
    proc.send_signal(signal.SIGTERM)
    status, log = finish(proc, timeout=20)
    assert status == ExitStatus.GRACE_EXCEEDED, log
    assert "grace_exceeded" in log and "after it began, grace 0.5s" in log


def test_multiprocessing_children_are_gone_after_shutdown(run_worker: RunWorker) -> None:
    # child_grace_s=120: the children must stop on SIGTERM (their inherited handlers are reset at
    # fork); were SIGTERM only recorded by a copy of our handler, the worker would outlive finish().
    proc, out = run_worker(
        kwargs={"max_iterations": 3, "child_grace_s": 120, "grace_s": 200}, mp_children=2, iteration_s=0.05
    )
    wait_for(lambda: any(x.startswith("children") for x in events(out)), message="children started")
    pids = [int(p) for p in next(x for x in events(out) if x.startswith("children")).split()[1:]]
    assert all(psutil.pid_exists(p) for p in pids)
    status, log = finish(proc)
    assert status == ExitStatus.MAX_ITERATIONS, log
    assert "stopping 2 child process(es)" in log

    def all_gone() -> bool:
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    return False
            except psutil.NoSuchProcess:
                pass
        return True

    wait_for(all_gone, message=f"children {pids} to be gone")


def test_hard_exit_kills_children_too(run_worker: RunWorker) -> None:
    proc, out = run_worker(
        kwargs={"memory_limit_mb": 60, "memory_hard_limit_mb": 120, "memory_strikes": 10_000},
        mp_children=2,
        leak_mb=20,
        iteration_s=0.05,
    )
    wait_for(lambda: any(x.startswith("children") for x in events(out)), message="children started")
    pids = [int(p) for p in next(x for x in events(out) if x.startswith("children")).split()[1:]]
    status, log = finish(proc)
    assert status == ExitStatus.MEMORY_HARD_LIMIT, log

    def all_gone() -> bool:
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    return False
            except psutil.NoSuchProcess:
                pass
        return True

    wait_for(all_gone, message=f"children {pids} to be gone")


def test_consecutive_failures_stop_with_their_status(run_worker: RunWorker) -> None:
    proc, out = run_worker(kwargs={"max_consecutive_failures": 3}, fail=True)
    status, log = finish(proc)
    assert status == ExitStatus.ITERATION_FAILURES, log
    assert events(out)[-1] == "exit 85 iteration_failures"
    assert "3 consecutive failed iterations, the limit" in log


def test_with_block_that_raises_exits_1_after_cleanup(run_worker: RunWorker) -> None:
    proc, out = run_worker(mode="with", raise_at=2, cleanups=True)
    status, log = finish(proc)
    assert status == ExitStatus.ERROR, log
    lines = events(out)
    assert [x for x in lines if x.startswith("cleanup")] == ["cleanup 3", "cleanup 2", "cleanup 1"]


def test_drain_delay_keeps_working_while_not_ready(run_worker: RunWorker) -> None:
    proc, out = run_worker(kwargs={"drain_delay_s": 1.0}, iteration_s=0.05)
    wait_event(out, "begin 2 ready=1", proc)
    proc.send_signal(signal.SIGTERM)
    status, log = finish(proc)
    assert status == 128 + signal.SIGTERM, log
    lines = events(out)
    assert any(x.endswith("ready=0") for x in lines), lines  # iterations went on, not ready
    assert "draining for 1s first" in log


def test_single_instance_refuses_a_second_start(run_worker: RunWorker, state_dir: Path) -> None:
    first, out1 = run_worker(kwargs={"name": "dup", "state_dir": str(state_dir)}, sleep_s=0.1)
    wait_event(out1, "started", first)
    second, out2 = run_worker(kwargs={"name": "dup", "state_dir": str(state_dir)}, sleep_s=0.1)
    status, log = finish(second)
    assert status == ExitStatus.ALREADY_RUNNING, log
    assert f"PID {first.pid}" in events(out2)[-1]
    first.send_signal(signal.SIGTERM)
    assert finish(first)[0] == 143


def test_instance_lock_skipped_under_a_procguard_parent(
    run_worker: RunWorker, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, out1 = run_worker(kwargs={"name": "dup2", "state_dir": str(state_dir)}, sleep_s=0.1)
    wait_event(out1, "started", first)
    # The runner holds the lock for us: its marker names this instance and this state directory.
    monkeypatch.setenv("PROCGUARD_INSTANCE", new_marker("dup2", namespace_of(state_dir)))
    second, _out2 = run_worker(kwargs={"name": "dup2", "state_dir": str(state_dir), "max_iterations": 1})
    assert finish(second)[0] == ExitStatus.MAX_ITERATIONS
    first.send_signal(signal.SIGTERM)
    assert finish(first)[0] == 143


def test_forgotten_shutdown_still_cleans_up_at_exit(run_worker: RunWorker) -> None:
    proc, out = run_worker(kwargs={"max_iterations": 2}, mp_children=2, cleanups=True, skip_shutdown=True)
    wait_for(lambda: any(x.startswith("children") for x in events(out)), message="children started")
    pids = [int(p) for p in next(x for x in events(out) if x.startswith("children")).split()[1:]]
    status, log = finish(proc)
    assert status == 0, log
    lines = events(out)
    assert [x for x in lines if x.startswith("cleanup")] == ["cleanup 3", "cleanup 2", "cleanup 1"]
    assert "the main thread ended without shutdown(); shutting down" in log

    def all_gone() -> bool:
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    return False
            except psutil.NoSuchProcess:
                pass
        return True

    wait_for(all_gone, message=f"children {pids} to be gone")
