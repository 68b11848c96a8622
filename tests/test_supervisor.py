"""``procguard up`` end to end: real supervisor, real workers, real signals."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

import psutil
import pytest

from procguard.instances.identity import find_marked
from procguard.instances.statedir import namespace_of
from procguard.supervisor.history import db_path, read_events

from .helpers import PROCGUARD, free_port, stop_process_tree, wait_for, wait_for_file
from .supervisor_workers.stackkit import (
    Stack,
    alive,
    kill_and_expect_no_survivors,
    lines,
    worker_cmd,
    write_config,
)

FAST = "start_period_s=0.3,sample_interval_s=0.2,probe_delay_s=0.2,probe_period_s=0.2,probe_timeout_s=1"


def make_stack(tmp_path: Path, state_dir: Path, spawn: Any, workers: dict[str, dict[str, Any]],
               *, tuning: str = FAST, **project: Any) -> Stack:
    config = write_config(tmp_path, workers, defaults={"grace": "5s"}, **project)
    return Stack(config, state_dir, spawn, tuning=tuning)


def starts(path: Path) -> int:
    return sum(1 for line in lines(path) if line.startswith("start"))


def history(stack: Stack, worker: str | None = None) -> list[Any]:
    events = read_events(db_path(stack.state_dir), project=stack.project, limit=0)
    return [e for e in events if worker is None or e.worker == worker]


def test_crash_restarts_at_once_then_waits_its_backoff(tmp_path: Path, state_dir: Path, spawn: Any) -> None:
    record = tmp_path / "crash"
    stack = make_stack(tmp_path, state_dir, spawn, {
        "crasher": {"command": worker_cmd("crash.py", record, 3, 0.2), "backoff_initial": "30s",
                    "backoff_max": "60s"},
    })
    stack.up()
    # first crash: restarted at once (no backoff); second crash: waits backoff_initial
    worker = stack.wait_state("crasher", "backoff")
    assert starts(record) == 2
    assert 0 < worker["next_start_in_seconds"] <= 30
    assert worker["restarts"] == 2
    assert worker["last_exit"]["status"] == 3 and worker["last_exit"]["reason"] == "crashed"
    assert worker["last_exit"]["detail"] == "exited with status 3" and worker["last_exit"]["by"] == "worker"
    stops = [e for e in history(stack, "crasher") if e.event == "stop"]
    assert [(e.reason, e.exit_status) for e in stops] == [("crashed", 3), ("crashed", 3)]
    assert all(e.runtime_seconds is not None and e.runtime_seconds >= 0.2 for e in stops)
    # 'restart' by hand does not wait for the backoff
    result = stack.cli("restart", "crasher")
    assert result.returncode == 0, result.stderr
    wait_for(lambda: starts(record) == 3, message="manual restart")


def test_crash_loop_goes_fatal_with_bounded_restarts_and_idle_supervisor(
    tmp_path: Path, state_dir: Path, spawn: Any
) -> None:
    record, ticks = tmp_path / "crash", tmp_path / "ticks"
    stack = make_stack(tmp_path, state_dir, spawn, {
        "crasher": {"command": worker_cmd("crash.py", record, 1), "backoff_initial": "0.05s",
                    "backoff_max": "0.2s", "start_limit": 4, "start_limit_interval": "60s"},
        "ticker": {"command": worker_cmd("ticker.py", ticks)},
    })
    proc = stack.up()
    worker = stack.wait_state("crasher", "fatal")
    assert worker["pid"] is None and worker["restarts"] == 3
    assert starts(record) == 4
    supervisor = psutil.Process(proc.pid)
    cpu_before = sum(supervisor.cpu_times()[:2])
    seen = len(lines(ticks))
    wait_for(lambda: len(lines(ticks)) >= seen + 20, message="20 more ticks of the healthy worker")
    assert starts(record) == 4, "a FATAL worker must stay down"
    assert stack.worker("crasher")["state"] == "fatal"  # type: ignore[index]
    assert sum(supervisor.cpu_times()[:2]) - cpu_before < 1.0, "supervisor should be idle"
    assert stack.worker("ticker")["state"] == "running"  # type: ignore[index]
    # FATAL until asked: 'start' clears it and the loop runs (and ends) again
    result = stack.cli("start", "crasher")
    assert result.returncode in (0, 1), result.stderr
    stack.wait_worker("crasher", lambda w: w["state"] == "fatal" and starts(record) == 8, what="fatal again")


def test_planned_recycle_is_not_counted_as_a_failure(tmp_path: Path, state_dir: Path, spawn: Any) -> None:
    record = tmp_path / "recycle"
    stack = make_stack(tmp_path, state_dir, spawn, {
        # exits 80 (max_runtime) after 0.1 s, again and again; a start limit of 2 would stop a crasher
        "recycler": {"command": worker_cmd("crash.py", record, 80, 0.1), "start_limit": 2,
                     "backoff_initial": "30s"},
    })
    stack.up()
    wait_for(lambda: starts(record) >= 6, message=lambda: f"6 recycles; {stack.output()[-2000:]}")
    worker = stack.worker("recycler")
    assert worker is not None and worker["state"] in ("starting", "running")
    assert worker["restarts"] >= 5
    stops = [e for e in history(stack, "recycler") if e.event == "stop"]
    assert stops and {(e.reason, e.exit_status) for e in stops} == {("max_runtime", 80)}


def test_memory_limit_of_a_command_is_enforced_from_outside(tmp_path: Path, state_dir: Path, spawn: Any) -> None:
    record = tmp_path / "hog"
    stack = make_stack(tmp_path, state_dir, spawn, {
        # 48 MB (+ the interpreter): over the limit, under its hard ceiling (50 MB x 1.25): a
        # graceful, planned recycle
        "hog": {"command": worker_cmd("hog.py", record, 48), "memory_limit": "50MB", "start_limit": 2},
    })
    stack.up()
    wait_for(lambda: starts(record) >= 3, message=lambda: f"3 recycles; {stack.output()[-2000:]}")
    stops = [e for e in history(stack, "hog") if e.event == "stop"]
    assert stops and all(e.reason == "memory_limit" for e in stops)
    assert all(e.by == "procguard" and "over the limit 50.0 MB" in (e.detail or "") for e in stops)
    assert all(e.peak_memory_bytes and e.peak_memory_bytes > 50 * 1024 * 1024 for e in stops)
    assert stack.worker("hog")["state"] != "fatal"  # type: ignore[index]


@pytest.mark.slow
def test_failing_liveness_probe_restarts_the_worker(tmp_path: Path, state_dir: Path, spawn: Any) -> None:
    # A function worker serves its own /health (its runner's responder, from the snapshots the worker
    # publishes); a frozen (SIGSTOPped) worker publishes nothing, its /health turns 503 once the last
    # snapshot is stale (5 s), and the supervisor restarts it after 3 failed probes. (A command
    # worker's port is answered by the supervisor itself and is not probed.)
    port = free_port()
    stack = make_stack(tmp_path, state_dir, spawn, {
        "frozen": {"run": "tests.supervisor_workers.targets:idle", "interval": "0.2s", "health_port": port,
                   "grace": "1s"},
    })
    stack.up()
    worker = stack.wait_worker("frozen", lambda w: w["state"] == "running" and w["health"] == "HTTP 200",
                               what="running and healthy")
    assert worker["runner"] is True
    os.kill(worker["pid"], signal.SIGSTOP)
    stack.wait_worker("frozen", lambda w: w["pid"] not in (None, worker["pid"]), what="replaced", timeout=40)
    stops = [e for e in history(stack, "frozen") if e.event == "stop"]
    # a frozen process only goes by SIGKILL, after its grace: the liveness stop it did not finish
    assert stops[0].reason == "grace_exceeded", stops[0]
    assert "liveness" in (stops[0].detail or "") and stops[0].exit_status == 128 + signal.SIGKILL
    assert "health probe failed (3/3)" in stack.output()


def test_down_stops_all_workers_in_parallel_within_grace(tmp_path: Path, state_dir: Path, spawn: Any) -> None:
    files = {f"slow{i}": tmp_path / f"slow{i}" for i in range(4)}
    workers: dict[str, dict[str, Any]] = {
        name: {"command": worker_cmd("slowstop.py", path, 0.5)} for name, path in files.items()
    }
    files["stubborn"] = tmp_path / "stubborn"
    workers["stubborn"] = {"command": worker_cmd("slowstop.py", files["stubborn"], -1), "grace": "1s"}
    stack = make_stack(tmp_path, state_dir, spawn, workers)
    proc = stack.up()
    pids = {name: int(wait_for_file(path, proc=proc).split()[0]) for name, path in files.items()}
    for name in workers:
        stack.wait_state(name, "running")
    result = stack.cli("down")
    assert result.returncode == 0, result.stderr
    assert "stopped" in result.stdout
    assert [name for name, pid in pids.items() if alive(pid)] == []
    assert proc.wait(timeout=10) == 0
    stops = {e.worker: e for e in history(stack) if e.event == "stop"}
    expected = {**dict.fromkeys(workers, "stopped"), "stubborn": "grace_exceeded"}  # killed after its grace
    assert {name: e.reason for name, e in stops.items()} == expected
    assert all(e.by == "operator" and e.detail == "procguard down" for name, e in stops.items() if name != "stubborn")
    assert stops["stubborn"].exit_status == 128 + signal.SIGKILL and "procguard down" in stops["stubborn"].detail
    assert all(stops[f"slow{i}"].exit_status == 0 for i in range(4))
    assert not (state_dir / "supervisor.teststack.sock").exists()
    assert stack.cli("down").returncode == 0  # nothing running: still fine


def test_second_interrupt_forces_the_stop(tmp_path: Path, state_dir: Path, spawn: Any) -> None:
    record = tmp_path / "stubborn"
    stack = make_stack(tmp_path, state_dir, spawn, {
        "stubborn": {"command": worker_cmd("slowstop.py", record, -1), "grace": "60s"},
    })
    proc = stack.up()
    pid = int(wait_for_file(record, proc=proc).split()[0])
    stack.wait_state("stubborn", "running")
    proc.send_signal(signal.SIGINT)
    stack.wait_state("stubborn", "stopping")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=20) == 1
    wait_for(lambda: not alive(pid), message="the stubborn worker to be killed")


def test_dependencies_start_after_and_stop_before(tmp_path: Path, state_dir: Path, spawn: Any) -> None:
    stack = make_stack(tmp_path, state_dir, spawn, {
        "api": {"command": worker_cmd("slowstop.py", tmp_path / "api", 0.2), "depends_on": ["db"]},
        "db": {"command": worker_cmd("slowstop.py", tmp_path / "db", 0.2)},
        "other": {"command": worker_cmd("slowstop.py", tmp_path / "other", 0)},
    })
    proc = stack.up("api")  # selects api and what it depends on, not 'other'
    stack.wait_state("api", "running")
    assert stack.worker("other")["state"] == "stopped"  # type: ignore[index]
    assert stack.cli("down").returncode == 0
    assert proc.wait(timeout=10) == 0
    events = list(reversed(history(stack)))  # oldest first
    order = [(e.worker, e.event) for e in events]
    assert order.index(("db", "start")) < order.index(("api", "start"))
    assert order.index(("api", "stop")) < order.index(("db", "stop"))
    db_running_at = next(e.time for e in events if e.worker == "db" and e.event == "start") + 0.3
    assert next(e.time for e in events if e.worker == "api" and e.event == "start") >= db_running_at - 0.05


@pytest.fixture
def detached(state_dir: Path) -> Any:
    """Stacks started with --detach are brought down (and their supervisor killed) at teardown."""
    stacks: list[Stack] = []
    yield stacks.append
    for stack in stacks:
        stack.cli("down", timeout=60)
        for proc in psutil.Process().children(recursive=True):
            try:
                if "--ready-fd" in proc.cmdline() and str(stack.config) in proc.cmdline():
                    stop_process_tree(proc, grace=5)
            except psutil.Error:
                pass


def test_up_detach_five_times_gives_one_supervisor_and_no_duplicates(
    tmp_path: Path, state_dir: Path, spawn: Any, detached: Any
) -> None:
    stack = make_stack(tmp_path, state_dir, spawn, {
        "a": {"command": worker_cmd("ticker.py", tmp_path / "a")},
        "b": {"command": worker_cmd("ticker.py", tmp_path / "b")},
    })
    detached(stack)
    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        results = list(pool.map(lambda _: stack.cli("up", "--detach", timeout=120), range(5)))
    assert [r.returncode for r in results] == [0] * 5, [r.stderr for r in results]
    assert sum("started (supervisor PID" in r.stdout for r in results) == 1
    assert sum("already running" in r.stdout for r in results) == 4
    again = stack.cli("up", "--detach")
    assert again.returncode == 0 and "already running" in again.stdout
    stack.wait_state("a", "running")
    stack.wait_state("b", "running")
    supervisors = [p for p in psutil.Process().children(recursive=True)
                   if _cmdline_has(p, "--ready-fd", str(stack.config))]
    assert len(supervisors) == 1
    for name in ("a", "b"):
        marked = [p for p in find_marked(f"teststack.{name}", namespace=namespace_of(state_dir)) if alive(p.pid)]
        assert [p.pid for p in marked] == [stack.worker(name)["pid"]]  # type: ignore[index]
    down = stack.cli("down")
    assert down.returncode == 0
    wait_for(lambda: not alive(supervisors[0].pid), message="the detached supervisor to exit")
    assert stack.cli("status").returncode == 3
    # right after 'down' returns, the stack can be brought up again
    again = stack.cli("up", "--detach")
    assert again.returncode == 0 and "started (supervisor PID" in again.stdout, again.stderr
    assert stack.cli("down").returncode == 0


def test_a_command_that_cannot_start_goes_fatal(tmp_path: Path, state_dir: Path, spawn: Any) -> None:
    stack = make_stack(tmp_path, state_dir, spawn, {
        "ghost": {"command": [str(tmp_path / "no-such-program")], "backoff_initial": "0.05s", "start_limit": 3},
        "ticker": {"command": worker_cmd("ticker.py", tmp_path / "ticks")},
    })
    stack.up()
    ghost = stack.wait_state("ghost", "fatal")
    assert ghost["last_exit"]["status"] == 127
    assert ghost["last_exit"]["reason"] == "crashed"
    assert ghost["last_exit"]["detail"] == "cannot start: No such file or directory"
    assert stack.wait_state("ticker", "running")["pid"]
    # status says the stack is not as asked: 1 while a worker is FATAL, 0 once it is stopped by hand
    troubled = stack.cli("status")
    assert troubled.returncode == 1 and "fatal" in troubled.stdout, troubled.stdout + troubled.stderr
    assert stack.cli("status", "--json").returncode == 1
    assert stack.cli("stop", "ghost").returncode == 0
    assert stack.cli("status").returncode == 0


def _cmdline_has(proc: psutil.Process, *parts: str) -> bool:
    try:
        cmdline = proc.cmdline()
    except psutil.Error:
        return False
    return all(part in cmdline for part in parts) and alive(proc.pid)


def test_sigkill_of_the_supervisor_leaves_no_survivors(tmp_path: Path, state_dir: Path, spawn: Any) -> None:
    pidfile, ticks, port, fn_port = tmp_path / "mp", tmp_path / "ticks", free_port(), free_port()
    stack = make_stack(tmp_path, state_dir, spawn, {
        "mp": {"command": worker_cmd("mpworker.py", pidfile, 4)},
        # a command with a health port: the supervisor answers on it, no runner beside the worker
        "ticker": {"command": worker_cmd("ticker.py", ticks), "health_port": port},
        # a function worker with a health port: one process, its port the supervisor's too
        "fn": {"run": "tests.supervisor_workers.targets:idle", "interval": "0.2s", "health_port": fn_port},
    })
    proc = stack.up()
    family = [int(p) for p in wait_for_file(pidfile, proc=proc).split()]
    assert len(family) == 5
    ticker = stack.wait_state("ticker", "running")["pid"]
    fn = stack.wait_worker("fn", lambda w: w["state"] == "running" and w["health"] == "HTTP 200",
                           what="running and healthy")["pid"]
    watchdogs = [p.pid for p in psutil.Process(proc.pid).children() if _cmdline_has(p, "procguard-watchdog")]
    assert len(watchdogs) == 1
    everyone = [*family, ticker, fn, *watchdogs]
    kill_and_expect_no_survivors(proc, everyone)
    for gone in (port, fn_port):
        with pytest.raises(ConnectionRefusedError):  # the ports went with the supervisor
            socket.create_connection(("127.0.0.1", gone), timeout=2).close()


def test_up_cleans_up_stale_workers_of_a_dead_supervisor(tmp_path: Path, state_dir: Path, spawn: Any) -> None:
    record = tmp_path / "stubborn"
    # no watchdog, and a worker that ignores the parent-death SIGTERM: it survives a SIGKILLed supervisor
    stack = make_stack(tmp_path, state_dir, spawn, {
        "stubborn": {"command": worker_cmd("slowstop.py", record, -1), "grace": "1s"},
    }, tuning=FAST + ",watchdog=0")
    first = stack.up()
    old = int(wait_for_file(record, proc=first).split()[0])
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    assert alive(old)
    second = stack.up()
    stack.wait_worker("stubborn", lambda w: w["pid"] not in (None, old), what="a fresh process")
    wait_for(lambda: not alive(old), message="the stale worker to be cleaned up")
    assert "stale" in stack.output()
    assert second.poll() is None


def test_a_second_foreground_up_is_refused(tmp_path: Path, state_dir: Path, spawn: Any) -> None:
    stack = make_stack(tmp_path, state_dir, spawn, {"t": {"command": worker_cmd("ticker.py", tmp_path / "t")}})
    proc = stack.up()
    stack.wait_up()
    result = subprocess.run([*PROCGUARD, "up", "-c", str(stack.config)], env=stack.env, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 3
    assert f"PID {proc.pid}" in result.stderr
    assert len([p for p in find_marked("teststack.t", namespace=namespace_of(state_dir)) if alive(p.pid)]) == 1


@pytest.mark.slow
def test_next_up_closes_the_runs_of_a_sigkilled_supervisor_in_history(
    tmp_path: Path, state_dir: Path, spawn: Any
) -> None:
    stubborn_file, ticks = tmp_path / "stubborn", tmp_path / "ticks"
    # no watchdog: 'stubborn' ignores the parent-death SIGTERM and survives, 'ticker' dies with the supervisor
    stack = make_stack(tmp_path, state_dir, spawn, {
        "stubborn": {"command": worker_cmd("slowstop.py", stubborn_file, -1), "grace": "1s"},
        "ticker": {"command": worker_cmd("ticker.py", ticks)},
    }, tuning=FAST + ",watchdog=0")
    first = stack.up()
    old = {name: stack.wait_state(name, "running")["pid"] for name in ("stubborn", "ticker")}
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    wait_for(lambda: not alive(old["ticker"]), message="the ticker to die with its supervisor")
    assert sorted((e.worker, e.event) for e in history(stack)) == [("stubborn", "start"), ("ticker", "start")]

    second = stack.up()
    for name in ("stubborn", "ticker"):
        stack.wait_worker(name, lambda w, name=name: w["pid"] not in (None, old[name]), what="a fresh process")
    assert second.poll() is None
    assert "ended with a supervisor that died" in stack.output()
    for name in ("stubborn", "ticker"):
        rows = list(reversed(history(stack, name)))  # oldest first
        assert [(e.event, e.reason) for e in rows] == [
            ("start", None), ("stop", "supervisor_died"), ("start", None)
        ], rows
        died = rows[1]
        assert died.pid == old[name] and died.exit_status is None and died.peak_memory_bytes is None
        assert rows[0].time <= died.time <= rows[2].time
    # the survivor was running until the second 'up' stopped it: its runtime is known; the other's is not
    stubborn_stop = history(stack, "stubborn")[1]
    assert stubborn_stop.runtime_seconds is not None and stubborn_stop.runtime_seconds > 0
    assert history(stack, "ticker")[1].runtime_seconds is None
    # a clean stop leaves nothing open: a third 'up' adds no supervisor_died row
    assert stack.cli("down").returncode == 0
    assert second.wait(timeout=20) == 0
    third = stack.up()
    stack.wait_state("ticker", "running")
    assert stack.cli("down").returncode == 0
    assert third.wait(timeout=20) == 0
    assert sum(e.reason == "supervisor_died" for e in history(stack)) == 2


def test_detached_supervisor_log_is_rotated_like_worker_logs(
    tmp_path: Path, state_dir: Path, spawn: Any, detached: Any
) -> None:
    record = tmp_path / "recycle"
    # a worker that recycles (exit 80) over and over: the supervisor logs a few lines per recycle
    stack = make_stack(tmp_path, state_dir, spawn, {
        "recycler": {"command": worker_cmd("crash.py", record, 80, 0.05)},
    }, log_max_bytes=2000, log_backups=1)
    detached(stack)
    result = subprocess.run([*PROCGUARD, "up", "--detach", "-c", str(stack.config)], env=stack.env,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    logs = state_dir / "logs" / "teststack"
    current, rotated = logs / "supervisor.log", logs / "supervisor.log.1"
    wait_for(rotated.exists, timeout=30, message=lambda: f"supervisor.log.1; files: {sorted(os.listdir(logs))}")
    wait_for(lambda: "restarting now" in current.read_text(errors="replace"), timeout=30,
             message="lines logged after the rotation in the new supervisor.log")
    down = stack.cli("down")
    assert down.returncode == 0, down.stderr
    # the last lines may be the ones that filled the file: then the stop line went into the rotated one
    wait_for(lambda: "supervisor of teststack stopped" in rotated.read_text(errors="replace") + current.read_text(
        errors="replace"), message=lambda: f"the supervisor's stop line; current file: {current.read_text()[-500:]}")
    names = sorted(p.name for p in logs.iterdir() if p.name.startswith("supervisor.log"))
    assert names == ["supervisor.log", "supervisor.log.1"]  # log_backups = 1
    assert all((logs / name).stat().st_size <= 2000 for name in names)
    assert "procguard" in rotated.read_text(errors="replace")
