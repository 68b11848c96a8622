"""ProcessManager in this process (no signals, no children): API, health, sleep, input checks.

Plus the OS readers with recorded inputs: cgroup files and signal capture.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from procguard.cgroup import memory_limit_bytes, soft_limit_warning
from procguard.errors import UsageError
from procguard.manager import ProcessManager
from procguard.reasons import StopReason, signal_name
from procguard.signals import SignalCapture

from .helpers import wait_for

MB = 1024 * 1024


def make(**kwargs: object) -> ProcessManager:
    base: dict[str, object] = {
        "max_runtime_hours": 0,
        "memory_limit_mb": 0,
        "cpu_limit_percent": 0,
        "handle_signals": False,
        "terminate_children": False,
        "sample_interval_s": 0.05,
    }
    base.update(kwargs)
    return ProcessManager(**base)  # type: ignore[arg-type]


@pytest.fixture
def manager() -> Iterator[ProcessManager]:
    m = make()
    yield m
    m.shutdown()


def test_iterations_and_completed_status(manager: ProcessManager) -> None:
    assert manager.health().reason == "not started"
    manager.start()
    for _ in range(5):
        assert manager.should_continue()
        manager.heartbeat()
    assert manager.iterations == 5
    assert manager.health().is_healthy and manager.readiness().is_healthy
    assert manager.shutdown() == 0
    assert manager.stop_reason is StopReason.COMPLETED
    assert not manager.should_continue()  # a shut-down manager never restarts
    assert manager.health().reason == "stopped"


def test_should_continue_starts_the_manager(manager: ProcessManager) -> None:
    assert manager.should_continue()
    assert manager.health().is_healthy


def test_request_stop_from_another_thread_wakes_sleep(manager: ProcessManager) -> None:
    manager.start()
    timer = threading.Timer(0.2, manager.request_stop)
    timer.start()
    started = time.monotonic()
    assert manager.sleep(60) is False
    assert time.monotonic() - started < 30
    assert manager.is_stopping and not manager.should_continue()
    assert manager.stop_reason is StopReason.REQUESTED
    assert manager.request_stop(StopReason.MAX_RUNTIME) is False  # first reason wins
    h = manager.health()
    assert not h.is_healthy and h.reason.startswith("stopping: requested")
    assert not manager.readiness().is_healthy
    timer.join()


def test_sleep_returns_true_when_not_woken(manager: ProcessManager) -> None:
    manager.start()
    assert manager.sleep(0.05) is True
    assert manager.sleep(0) is True


def test_sleep_async_wakes_on_a_stop_from_a_thread(manager: ProcessManager) -> None:
    manager.start()

    async def main() -> bool:
        threading.Timer(0.2, manager.request_stop).start()
        return await asyncio.wait_for(manager.sleep_async(60), 30)

    assert asyncio.run(main()) is False
    assert manager.stop_reason is StopReason.REQUESTED


def test_async_context_manager_runs_async_cleanups_on_the_loop() -> None:
    seen: list[str] = []
    m = make(max_iterations=2)

    async def main() -> None:
        loop = asyncio.get_running_loop()

        async def close() -> None:
            assert asyncio.get_running_loop() is loop
            seen.append("async")

        async with m:
            m.add_cleanup(lambda: seen.append("sync"))
            m.add_cleanup(close)
            while m.should_continue():
                await m.sleep_async(0.01)

    asyncio.run(main())
    assert seen == ["async", "sync"]
    assert m.exit_status == 81 and m.stop_reason is StopReason.MAX_ITERATIONS


def test_set_ready_affects_readiness_not_liveness(manager: ProcessManager) -> None:
    manager.start()
    manager.set_ready(False, "database down")
    assert manager.readiness().reason == "database down" and not manager.readiness().is_healthy
    assert manager.health().is_healthy
    manager.set_ready(True)
    assert manager.readiness().is_healthy


def test_stale_heartbeat_turns_unhealthy_then_stops() -> None:
    m = make(heartbeat_timeout_s=0.3)
    try:
        m.start()
        assert m.should_continue()
        wait_for(lambda: not m.health().is_healthy, message="health to turn red")
        wait_for(lambda: m.is_stopping, message="the heartbeat timeout stop")
        assert m.stop_reason is StopReason.HEARTBEAT_TIMEOUT
        assert not m.should_continue()
    finally:
        assert m.shutdown() == 84


def test_metrics_has_exactly_the_design_keys() -> None:
    m = make(max_runtime_hours=1, memory_limit_mb=4096)
    try:
        m.start()
        m.should_continue()
        doc = m.metrics()
        assert set(doc) == {"metrics", "health", "runtime"}
        assert set(doc["metrics"]) == {
            "pid", "uptime_seconds", "cpu_percent", "memory_mb", "memory_percent", "num_threads",
            "heartbeat_age_seconds",
        }
        assert doc["metrics"]["pid"] == os.getpid()
        assert doc["metrics"]["memory_mb"] > 5
        assert doc["health"] == {"is_healthy": True, "reason": "healthy"}
        assert 0.99 < doc["runtime"]["remaining_hours"] <= 1.0
        snap = m.snapshot()
        assert snap.iterations == 1 and snap.memory_limit_bytes == 4096 * MB
        assert snap.max_runtime_seconds == 3600
    finally:
        m.shutdown()


def test_limit_breach_shows_in_health_before_the_stop() -> None:
    m = make(memory_limit_mb=1, memory_hard_limit_mb=100_000, memory_strikes=1_000_000)
    try:
        m.start()
        wait_for(lambda: "over the limit" in m.health().reason, message="memory breach in health")
        assert not m.is_stopping
    finally:
        m.shutdown()


def test_record_failure_counts_consecutive_ones() -> None:
    m = make(max_consecutive_failures=2)
    try:
        m.start()
        m.record_failure(ValueError("a"))
        m.record_success()
        m.record_failure(ValueError("b"))
        assert not m.is_stopping
        m.record_failure(ValueError("c"))
        assert m.stop_reason is StopReason.ITERATION_FAILURES
        assert m.snapshot().failed_iterations == 3
    finally:
        assert m.shutdown() == 85


def test_hot_path_allocates_nothing(manager: ProcessManager) -> None:
    manager.start()
    for _ in range(1000):
        manager.should_continue()
        manager.heartbeat()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for _ in range(20_000):
            manager.should_continue()
            manager.heartbeat()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    here = tracemalloc.Filter(True, "*procguard/manager.py")
    growth = sum(s.size_diff for s in after.filter_traces([here]).compare_to(before.filter_traces([here]), "lineno"))
    assert growth < 1024, growth


def test_hot_path_calls_nothing_but_monotonic(manager: ProcessManager) -> None:
    """No lock, no system call: the only C function the two hot calls reach is time.monotonic."""
    import sys

    manager.start()
    calls: list[str] = []

    def profile(frame: object, event: str, arg: object) -> None:
        if event == "c_call":
            calls.append(getattr(arg, "__qualname__", repr(arg)))
        elif event == "call":
            calls.append(frame.f_code.co_name)  # type: ignore[attr-defined]

    sys.setprofile(profile)
    try:
        for _ in range(100):
            manager.should_continue()
            manager.heartbeat()
    finally:
        sys.setprofile(None)
    assert set(calls) - {"setprofile"} == {"should_continue", "heartbeat", "monotonic"}, set(calls)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"memory_limit_mb": -5}, "memory_limit_mb"),
        ({"memory_limit_mb": "12XB"}, "'12XB' is not a size"),
        ({"cpu_limit_percent": 100.0 * ((os.cpu_count() or 1) + 1)}, "cpu_limit_percent"),
        ({"max_runtime_hours": "soon"}, "max_runtime_hours"),
        ({"sample_interval_s": 0}, "sample_interval_s"),
        ({"memory_limit_mb": 200, "memory_hard_limit_mb": 100}, "below memory_limit"),
        ({"grace_s": 0}, "grace_s"),
        ({"grace_s": None}, "grace_s"),
        ({"max_iterations": -1}, "max_iterations"),
        ({"name": ""}, "name"),
    ],
)
def test_bad_input_is_a_usage_error(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(UsageError, match=fragment):
        make(**kwargs)


def test_zero_and_none_mean_no_limit() -> None:
    lim = ProcessManager(None, 0, None, 0, max_iterations=0, heartbeat_timeout_s=0).limits
    assert lim.max_runtime_s is None and lim.memory_limit_bytes is None and lim.memory_ceiling_bytes is None
    assert lim.cpu_limit_percent is None and lim.max_iterations is None and lim.heartbeat_timeout_s is None


def test_seed_defaults_and_units() -> None:
    lim = ProcessManager("collector").limits
    assert lim.max_runtime_s == 24 * 3600 and lim.memory_limit_bytes == 2048 * MB
    assert lim.memory_ceiling_bytes == 2560 * MB and lim.cpu_limit_percent == 80
    assert lim.health_port is None  # the library serves HTTP only when asked
    assert ProcessManager(memory_limit_mb="1GiB").limits.memory_limit_bytes == 1024 * MB


def test_keywords_are_the_settings_declared_for_the_library() -> None:
    """The constructor's setting keywords are exactly the ones the settings table declares."""
    import inspect

    from procguard.limits import SETTINGS

    params = inspect.signature(ProcessManager).parameters
    declared = {s.keyword for s in SETTINGS if s.keyword}
    own = {"name", "limits", "sample_interval_s", "include_children", "use_uss", "handle_signals",
           "cleanup_timeout_s", "child_grace_s", "terminate_children", "single_instance",
           "state_dir", "helper_pids", "otel"}
    assert set(params) - own == declared


def test_keywords_override_a_limits_value() -> None:
    from procguard.limits import WorkerLimits

    base = WorkerLimits(memory_limit_bytes=100 * MB, grace_s=5.0)
    m = ProcessManager("w", memory_limit_mb=300, limits=base)
    assert m.limits == base.with_changes(memory_limit_bytes=300 * MB)


def test_from_args_uses_the_lifecycle_flags() -> None:
    from procguard.lifecycle_args import add_lifecycle_arguments

    parser = argparse.ArgumentParser()
    add_lifecycle_arguments(parser)
    args = parser.parse_args(["--max-runtime", "2", "--memory-limit", "512", "--cpu-limit", "50"])
    m = ProcessManager.from_args(args, handle_signals=False)
    lim = m.limits
    assert lim.max_runtime_s == 7200 and lim.memory_limit_bytes == 512 * MB and lim.cpu_limit_percent == 50
    assert m.handle_signals is False


# --- signals -----------------------------------------------------------------


def test_signal_capture_records_and_restores() -> None:
    previous = signal.getsignal(signal.SIGTERM)
    capture = SignalCapture([signal.SIGTERM])
    try:
        assert capture.install()
        signal.raise_signal(signal.SIGTERM)
        assert capture.count == 1 and capture.first_signum == signal.SIGTERM
        assert os.read(capture.wakeup_fd, 10) == b"\0"
        signal.raise_signal(signal.SIGTERM)
        assert capture.count == 2
    finally:
        capture.close()
    assert signal.getsignal(signal.SIGTERM) is previous
    assert signal_name(15) == "SIGTERM" and signal_name(None) == "no signal"


def test_signal_capture_refuses_other_threads() -> None:
    capture = SignalCapture()
    result: list[bool] = []
    t = threading.Thread(target=lambda: result.append(capture.install()))
    t.start()
    t.join()
    capture.close()
    assert result == [False]


def test_manager_restores_handlers_on_shutdown() -> None:
    previous = signal.getsignal(signal.SIGINT)
    m = make(handle_signals=True)
    m.start()
    assert signal.getsignal(signal.SIGINT) is not previous
    m.shutdown()
    assert signal.getsignal(signal.SIGINT) is previous


# --- cgroup ------------------------------------------------------------------


def _fake(tmp_path: Path, cgroup_line: str, files: dict[str, str]) -> tuple[Path, Path]:
    proc, root = tmp_path / "proc", tmp_path / "cg"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_text(cgroup_line)
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return proc, root


def test_cgroup_v2_takes_the_smallest_ancestor_limit(tmp_path: Path) -> None:
    proc, root = _fake(
        tmp_path,
        "0::/system.slice/app.service\n",
        {
            "cgroup.controllers": "memory\n",
            "system.slice/memory.max": "1073741824\n",
            "system.slice/app.service/memory.max": "max\n",
        },
    )
    assert memory_limit_bytes(proc_root=proc, cgroup_root=root) == 1024 * MB


def test_cgroup_v1_limit_and_unlimited(tmp_path: Path) -> None:
    proc, root = _fake(
        tmp_path, "4:memory:/docker/abc\n3:cpu:/\n", {"memory/docker/abc/memory.limit_in_bytes": "536870912\n"}
    )
    assert memory_limit_bytes(proc_root=proc, cgroup_root=root) == 512 * MB
    proc2, root2 = _fake(
        tmp_path / "b", "4:memory:/\n", {"memory/memory.limit_in_bytes": "9223372036854771712\n"}
    )
    assert memory_limit_bytes(proc_root=proc2, cgroup_root=root2) is None


def test_cgroup_missing_is_no_limit(tmp_path: Path) -> None:
    assert memory_limit_bytes(proc_root=tmp_path, cgroup_root=tmp_path) is None
    assert isinstance(memory_limit_bytes(), (int, type(None)))  # the real machine: never raises


def test_soft_limit_warning() -> None:
    assert soft_limit_warning(100 * MB, None) is None
    assert soft_limit_warning(100 * MB, 200 * MB) is None
    text = soft_limit_warning(300 * MB, 200 * MB)
    assert text is not None and "300 MB" in text and "200 MB" in text and "SIGKILL" in text


# --- health server wiring ------------------------------------------------------


def _get(port: int, path: str) -> tuple[int, dict[str, object]]:
    import json
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_health_server_follows_the_manager(state_dir: Path) -> None:
    from .helpers import free_port

    port = free_port()
    m = make(name="wired", health_port=port)
    try:
        m.start()
        assert m.health_server is not None and m.health_server.port == port
        assert m.should_continue()
        assert _get(port, "/health") == (200, {"status": "ok", "reason": "healthy"})
        assert _get(port, "/ready")[0] == 200
        status, doc = _get(port, "/metrics")
        assert status == 200 and doc["metrics"]["pid"] == os.getpid()  # type: ignore[index]
        responder = m.health_server.responder_pid
        if responder:  # procguard's own responder process is not the worker's memory
            wait_for(lambda: (latest := m._monitor.latest) is not None and responder not in latest.children,
                     message="exclusion")
        m.set_ready(False, "cache warming")
        assert _get(port, "/ready") == (503, {"status": "not_ready", "reason": "cache warming"})
        assert _get(port, "/health")[0] == 200
        m.request_stop()
        status, body = _get(port, "/health")
        assert status == 503 and str(body["reason"]).startswith("stopping: requested")
    finally:
        m.shutdown()
    import socket

    with pytest.raises(OSError):  # the server is gone with the manager
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_systemd_notify_ready_watchdog_while_fresh_then_stopping(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    path = tmp_path / "n.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(10)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "100000")  # 0.1 s: WATCHDOG=1 at most every 0.05 s
    m = make(heartbeat_timeout_s=0.5)
    messages: list[str] = []
    try:
        m.start()
        m.should_continue()
        while "WATCHDOG=1" not in messages:
            messages.append(sock.recv(4096).decode())
        # no heartbeat from here on: the watchdog stops, then the stop is announced
        while not messages[-1].startswith("STOPPING=1"):
            messages.append(sock.recv(4096).decode())
    finally:
        m.shutdown()
        sock.setblocking(False)
        try:
            while True:
                messages.append(sock.recv(4096).decode())
        except BlockingIOError:
            pass
        sock.close()
    assert messages[0] == "READY=1"
    stopping = next(i for i, msg in enumerate(messages) if msg.startswith("STOPPING=1"))
    assert "STATUS=stopping: heartbeat_timeout" in messages[stopping]
    assert "WATCHDOG=1" not in messages[stopping:]
