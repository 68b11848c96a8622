"""A command worker's health port under ``procguard up``: answered by the supervisor itself.

Real stacks, real sockets on 127.0.0.1, free ports. What is checked:

- /health, /ready and /metrics (JSON and Prometheus) of a command worker
  come from the supervisor's own socket, with the figures of the worker's
  own tree and the worker's labels; the bearer token guards /metrics;
- no ``procguard run`` and no guardian in the stack's process tree for a
  command worker (a ``run =`` worker is one process, the worker, without a
  guardian);
- the port reads 503 while the worker drains, stops and backs off, is
  kept across restarts and released at ``procguard stop``; a taken port
  fails the start (one line naming it) and backs off like a failed start;
- the hostile-HTTP cases of the status page hold on a health port too.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from procguard.instances.childproc import tree_pids

from .helpers import PROCGUARD, free_port, stop_process_tree, wait_for
from .http_abuse import (
    FOREIGN_HOSTS,
    OTHER_METHODS,
    assert_token_guards_metrics,
    exchange,
    get,
    malformed_heads,
    open_idle,
    slowloris_is_cut,
    threads_and_rss_kb,
)
from .supervisor_workers.stackkit import Stack, alive, lines, worker_cmd, write_config

FAST = "start_period_s=0.3,sample_interval_s=0.2"
#: Unique to this run: an ``up`` stops stale processes of its project name.
PROJECT = f"ports{os.getpid()}"
TOKEN = "s3cret-token"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _descendants(root: int) -> list[int]:
    """``root``'s live descendants (procguard's own tree walk, through the kernel's children lists)."""
    return tree_pids(root)[1:]


def listening_pid(port: int, candidates: list[int]) -> int | None:
    """Which of ``candidates`` holds the listening socket on 127.0.0.1:``port`` (from /proc/net/tcp)."""
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state = fields[1], fields[3]
        if state == "0A" and int(local.split(":")[1], 16) == port:
            inode = fields[9]
    if inode is None:
        return None
    for pid in candidates:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                    return pid
            except OSError:
                continue
    return None


def refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


def _json(port: int, path: str, **headers: str) -> tuple[int, dict[str, Any]]:
    status, _headers, body = get(port, path, **headers)
    return status, json.loads(body)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, dict[str, int]]]:
    """One stack for the module: ``web`` (a command with a health port), ``locked`` (the same with a
    token), ``fn`` (a function worker with a health port). Tests leave it as they found it."""
    tmp_path = tmp_path_factory.mktemp("ports")
    started: list[subprocess.Popen[bytes]] = []

    def spawn(argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, **kwargs)
        started.append(proc)
        return proc

    ports = {"web": free_port(), "locked": free_port(), "fn": free_port(), "status": free_port()}
    config = write_config(tmp_path, {
        "web": {"command": worker_cmd("ticker.py", tmp_path / "web"), "health_port": ports["web"],
                "memory_limit": "300MB", "max_runtime": "1h"},
        "locked": {"command": worker_cmd("ticker.py", tmp_path / "locked"), "health_port": ports["locked"],
                   "env": {"PROCGUARD_HEALTH_TOKEN": TOKEN}},
        "fn": {"run": "tests.supervisor_workers.targets:idle", "interval": "1s", "health_port": ports["fn"]},
    }, project=PROJECT, defaults={"grace": "5s"}, status_port=ports["status"])
    stack = Stack(config, tmp_path / "state", spawn, project=PROJECT, tuning=FAST)
    for var in ("PROCGUARD_INSTANCE", "NOTIFY_SOCKET", "WATCHDOG_USEC"):  # set up before the autouse scrub
        stack.env.pop(var, None)
    try:
        stack.up()
        for name in ("web", "locked", "fn"):
            stack.wait_state(name, "running")
        # figures once the supervisor has sampled the worker
        stack.wait_worker("web", lambda w: w["memory_mb"] is not None, what="sampled")
        yield stack, ports
    finally:
        for proc in started:
            stop_process_tree(proc, grace=5)


def test_health_ready_metrics_are_answered_by_the_supervisor(stack: tuple[Stack, dict[str, int]]) -> None:
    up, ports = stack
    assert up.proc is not None
    web = up.worker("web")
    assert web is not None
    port = ports["web"]
    assert _json(port, "/health") == (200, {"status": "ok", "reason": "healthy"})
    assert _json(port, "/ready") == (200, {"status": "ready", "reason": "ready"})
    # The listening socket is the supervisor's own: nothing else in the stack serves it.
    assert listening_pid(port, [up.proc.pid, *_descendants(up.proc.pid)]) == up.proc.pid
    status, metrics = _json(port, "/metrics")
    assert status == 200
    assert metrics["metrics"]["pid"] == web["pid"]  # the command itself, not a runner
    assert metrics["metrics"]["memory_mb"] > 1 and metrics["metrics"]["num_threads"] >= 1
    assert metrics["health"] == {"is_healthy": True, "reason": "healthy"}
    assert 0 < metrics["runtime"]["remaining_hours"] <= 1.0
    assert web["runner"] is False and web["health"] == "HTTP 200"

    for extra in ({"path": "/metrics?format=prometheus"}, {"path": "/metrics", "Accept": "text/plain"}):
        path = extra.pop("path")
        status, headers, body = get(port, path, **extra)
        assert status == 200 and headers["content-type"].startswith("text/plain"), headers
        families = {f.name: f for f in text_string_to_metric_families(body.decode())}
        memory = families["procguard_memory_resident_bytes"].samples[0]
        assert memory.labels == {"worker": "web", "stack": PROJECT}
        assert memory.value > 1024 * 1024
        assert families["procguard_healthy"].samples[0].value == 1
    status, headers, _ = get(port, "/metrics?format=openmetrics")
    assert status == 200 and headers["content-type"].startswith("application/openmetrics-text")


def test_the_bearer_token_guards_metrics_only(stack: tuple[Stack, dict[str, int]]) -> None:
    _up, ports = stack
    port = ports["locked"]
    assert_token_guards_metrics(port, TOKEN)
    assert get(ports["web"], "/metrics")[0] == 200  # another worker's port: no token of its own


def test_no_runner_and_no_guardian_in_the_stack(stack: tuple[Stack, dict[str, int]]) -> None:
    up, _ports = stack
    assert up.proc is not None
    tree = {pid: _cmdline(pid) for pid in _descendants(up.proc.pid)}
    status = {w["name"]: w for w in up.status() or []}
    runners = [cmd for cmd in tree.values() if " run " in f" {cmd} " and "procguard" in cmd]
    # One runner: the function worker, which is the worker itself; none in front of a command.
    assert len(runners) == 1 and "targets:idle" in runners[0], tree
    assert not [cmd for cmd in tree.values() if "guardian" in cmd], tree
    for name in ("web", "locked"):
        assert "ticker.py" in tree[status[name]["pid"]], (name, tree)
        assert status[name]["runner"] is False
    assert status["fn"]["runner"] is True and "targets:idle" in tree[status["fn"]["pid"]]
    # The supervisor's threads: main, the HTTP thread serving every port, the prober (for fn).
    threads = sorted(p.name for p in Path(f"/proc/{up.proc.pid}/task").iterdir())
    assert len(threads) <= 3, threads


def test_hostile_http_on_a_health_port(stack: tuple[Stack, dict[str, int]]) -> None:
    up, ports = stack
    assert up.proc is not None
    port = ports["web"]
    for host in FOREIGN_HOSTS:
        for path in ("/health", "/ready", "/metrics"):
            status, headers, body = get(port, path, host=host.format(port=port))
            assert status == 403 and headers["content-type"] == "application/json", (host, path, body)
            assert b"web" not in body and b"procguard_" not in body
    for template in OTHER_METHODS:  # on the health paths (other paths are 404 whatever the method)
        line = template.replace(b" / ", b" /health ").replace(b"{path}", b"/ready")
        status, headers, body = exchange(port, line + b"\r\nHost: 127.0.0.1\r\n\r\n")
        not_a_path = line.startswith((b"CONNECT", b"OPTIONS *"))
        assert status == (400 if not_a_path else 405), (line, body)
        assert not_a_path or headers["allow"] == "GET, HEAD"
        assert headers["content-type"] == "application/json" and b"Traceback" not in body
    for request, expected in malformed_heads("/health"):
        status, headers, body = exchange(port, request)
        assert status == expected, (request[:60], status, body[:200])
        assert headers["content-type"] == "application/json" and b"Traceback" not in body
    assert get(port, "/nope")[0] == 404
    status, headers, body = exchange(port, b"HEAD /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert status == 200 and body == b"" and int(headers["content-length"]) > 10

    threads_before, rss_before = threads_and_rss_kb(up.proc.pid)
    idle = open_idle(port, 300, "/health")
    try:
        assert get(port, "/health")[0] == 200  # answered during the flood
        assert get(ports["status"], "/api/workers")[0] == 200  # and so is the status page (same thread)
        threads_during, rss_during = threads_and_rss_kb(up.proc.pid)
    finally:
        for sock in idle:
            sock.close()
    assert threads_during == threads_before, (threads_before, threads_during)
    assert rss_during - rss_before < 4 * 1024, (rss_before, rss_during)  # KB
    assert slowloris_is_cut(port, "/health"), "a head trickling in forever must be cut off within 10 s"
    assert get(port, "/health")[0] == 200


def test_drain_stop_backoff_and_a_port_kept_across_restarts(tmp_path: Path, state_dir: Path, spawn: Any) -> None:
    port, record = free_port(), tmp_path / "api"
    config = write_config(tmp_path, {
        # slowstop: records its pid, takes 0.5 s to stop after SIGTERM, then exits 0
        "api": {"command": worker_cmd("slowstop.py", record, 0.5), "health_port": port,
                "drain_delay": "1.5s", "grace": "5s", "restart": "always", "backoff_initial": "3s"},
    })
    up = Stack(config, state_dir, spawn, tuning=FAST)
    up.up()
    first = up.wait_state("api", "running")
    assert get(port, "/health")[0] == 200

    # An operator's stop drains first: not ready (and not healthy) while the worker keeps running.
    result = up.cli("restart", "api")
    assert result.returncode == 0, result.stderr
    second = up.wait_state("api", "running", timeout=20)
    assert second["pid"] != first["pid"]
    log = up.output()
    assert "not ready, draining for 1.5s before SIGTERM" in log and "drain over, sending SIGTERM" in log

    # The worker's own exits (killed from outside; the second in a row backs off): 503 "not running".
    os.kill(second["pid"], 9)
    again = up.wait_worker("api", lambda w: w["state"] == "running" and w["pid"] != second["pid"],
                           what="restarted at once")
    os.kill(again["pid"], 9)
    up.wait_state("api", "backoff")
    status, body = _json(port, "/health")
    assert status == 503 and body["reason"].startswith("not running (backoff"), body
    assert _json(port, "/ready")[0] == 503
    third = up.wait_state("api", "running", timeout=20)
    assert third["pid"] != again["pid"] and get(port, "/health")[0] == 200

    # procguard stop: the port goes with the worker.
    assert up.cli("stop", "api").returncode == 0
    up.wait_state("api", "stopped")
    wait_for(lambda: refused(port), message="the health port to be released at stop")
    assert up.cli("start", "api").returncode == 0
    up.wait_state("api", "running")
    assert get(port, "/health")[0] == 200
    assert up.cli("down").returncode == 0
    wait_for(lambda: refused(port), message="the health port to be released at down")


def test_draining_reads_503_while_the_worker_still_runs(tmp_path: Path, state_dir: Path, spawn: Any) -> None:
    port, record = free_port(), tmp_path / "api"
    config = write_config(tmp_path, {
        "api": {"command": worker_cmd("slowstop.py", record, 0), "health_port": port,
                "drain_delay": "3s", "grace": "5s", "restart": "never"},
    })
    up = Stack(config, state_dir, spawn, tuning=FAST)
    up.up()
    running = up.wait_state("api", "running")
    stopper = subprocess.Popen([*PROCGUARD, "stop", "api", "-c", str(up.config)], env=up.env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        up.wait_state("api", "stopping")
        ready, health = _json(port, "/ready"), _json(port, "/health")
        assert alive(running["pid"])  # still working: SIGTERM comes after the drain
        assert ready == (503, {"status": "not_ready", "reason": "stopping: stopped"}), ready
        assert health == (503, {"status": "unhealthy", "reason": "stopping: stopped"}), health
        assert stopper.wait(timeout=20) == 0
    finally:
        if stopper.poll() is None:
            stopper.kill()
            stopper.wait()
    last = up.wait_state("api", "stopped")["last_exit"]
    assert last["reason"] == "stopped" and last["status"] == 0 and last["runtime_seconds"] >= 3
    assert lines(record) == [str(running["pid"])]


def test_a_taken_port_fails_the_start_and_backs_off(tmp_path: Path, state_dir: Path, spawn: Any) -> None:
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    config = write_config(tmp_path, {
        "api": {"command": worker_cmd("ticker.py", tmp_path / "ticks"), "health_port": port,
                "backoff_initial": "0.5s", "start_limit": 100},
    })
    up = Stack(config, state_dir, spawn, tuning=FAST)
    try:
        up.up()
        up.wait_worker("api", lambda w: w["last_exit"] is not None, what="a failed start")
        worker = up.worker("api")
        assert worker is not None and worker["state"] in ("backoff", "starting")
        last = worker["last_exit"]
        assert last["reason"] == "crashed"
        assert f"cannot start: health port {port} on 127.0.0.1 is already in use" in last["detail"], last
        assert f"api: cannot start: health port {port} on 127.0.0.1 is already in use" in up.output()
        assert not lines(tmp_path / "ticks")  # the command never ran without its port
    finally:
        holder.close()
    up.wait_state("api", "running", timeout=20)  # the port is free now: the next start takes it
    assert get(port, "/health")[0] == 200
