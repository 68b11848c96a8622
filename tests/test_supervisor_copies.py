"""Copies of a worker (``instances = N``) and ``procguard scale``: real stacks, real processes and ports.

What is checked:

- a command worker with ``instances = 3`` and a health port runs three
  processes, each with ``PROCGUARD_INSTANCE_INDEX``/``PROCGUARD_INSTANCES``
  and its own marker name; ports P..P+2 answer /health from the supervisor;
  ``status`` (table and JSON), the status page's API and ``/metrics`` show
  each copy; ``logs`` and ``history`` of ``api`` cover every copy;
- ``stop api:2`` stops that copy alone; an unknown copy is one line, exit 2;
- ``scale api 1`` stops copies 3 then 2, one after the other, each
  gracefully (SIGTERM, its own stop, a history row); ``scale api 2`` starts
  copy 2 again on port P+1;
- a function worker (``run =``) with ``instances = 2``: two runners, each
  with its copy's environment;
- SIGKILL of the supervisor with three copies (each with children, one of
  them in a session of its own): no survivors.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from procguard.supervisor.history import db_path, read_events

from .helpers import PROCGUARD, free_port, free_ports, python_env, wait_for
from .http_abuse import get
from .supervisor_workers.stackkit import (
    Stack,
    alive,
    kill_and_expect_no_survivors,
    lines,
    worker_cmd,
    write_config,
)

FAST = "start_period_s=0.3,sample_interval_s=0.2"


def _facts(directory: Path, name: str) -> dict[str, Any]:
    path = directory / name
    return wait_for(lambda: json.loads(path.read_text()) if path.exists() else None,
                    message=f"{path} to be written")


def _refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _events(directory: Path) -> list[tuple[str, str, float]]:
    """The SIGTERM records of the copies: (what, copy, monotonic time)."""
    return [(w, k, float(t)) for w, k, t in (line.split() for line in lines(directory / "events"))]


def _names(stack: Stack) -> list[str]:
    return [w["name"] for w in stack.status() or []]


@pytest.fixture
def copies_stack(tmp_path: Path, state_dir: Path, spawn: Any) -> tuple[Stack, int, int, Path]:
    """``api``: a command with 3 copies and health port P; ``fn``: a function worker with 2 copies and
    health port Q (the test reads it as P+100)."""
    port, status_port = free_ports(4), free_port()  # P..P+2, and P+3 that nobody holds
    fn_port = port + 100
    while not all(_bindable(p) for p in (fn_port, fn_port + 1)):
        port = free_ports(4)
        fn_port = port + 100
    directory = tmp_path / "records"
    directory.mkdir()
    config = write_config(tmp_path, {
        "api": {"command": worker_cmd("copy_worker.py", directory), "instances": 3, "health_port": port},
        "fn": {"run": "tests.supervisor_workers.targets:write_copy_env", "interval": "0.5s", "instances": 2,
               "health_port": fn_port, "env": {"COPY_DIR": str(directory)}},
    }, project=f"copies{os.getpid()}", defaults={"grace": "5s"}, status_port=status_port)
    stack = Stack(config, state_dir, spawn, project=f"copies{os.getpid()}", tuning=FAST)
    stack.up()
    for name in ("api:1", "api:2", "api:3", "fn:1", "fn:2"):
        stack.wait_state(name, "running")
    return stack, port, status_port, directory


def test_three_copies_run_are_shown_stopped_and_scaled(copies_stack: tuple[Stack, int, int, Path]) -> None:
    stack, port, status_port, directory = copies_stack
    project = stack.project

    # three processes, each told which copy it is, each marked with its own name
    facts = {k: _facts(directory, f"env-{k}") for k in (1, 2, 3)}
    pids = {k: stack.wait_state(f"api:{k}", "running")["pid"] for k in (1, 2, 3)}
    assert len(set(pids.values())) == 3
    for k in (1, 2, 3):
        assert facts[k]["pid"] == pids[k]
        assert facts[k]["PROCGUARD_INSTANCE_INDEX"] == str(k)
        assert facts[k]["PROCGUARD_INSTANCES"] == "3"
        assert facts[k]["PROCGUARD_WORKER"] == "api"  # the series label stays the name in procguard.toml
        assert facts[k]["PROCGUARD_INSTANCE"].startswith(f"{project}.api:{k}:")

    # ports P..P+2 answer /health (served by the supervisor); P+3 is nobody's
    for k in (1, 2, 3):
        status, _headers, body = get(port + k - 1, "/health")
        assert status == 200, body
    assert _refused(port + 3)

    # status: one row per copy, in the table, the JSON, the page's API and the metrics
    table = stack.cli("status")
    assert table.returncode == 0, table.stderr
    rows = [line.split()[0] for line in table.stdout.splitlines()[2:]]
    assert rows == ["api:1", "api:2", "api:3", "fn:1", "fn:2"]
    only = json.loads(stack.cli("status", "api", "--json").stdout)
    assert [(w["name"], w["worker"], w["copy"], w["health_port"]) for w in only] == [
        ("api:1", "api", 1, port), ("api:2", "api", 2, port + 1), ("api:3", "api", 3, port + 2)]
    page_status, _headers, page = get(status_port, "/api/workers")
    assert page_status == 200
    assert [w["name"] for w in json.loads(page)] == ["api:1", "api:2", "api:3", "fn:1", "fn:2"]
    _status, _headers, metrics = get(status_port, "/metrics")
    up = {(s.labels["worker"], s.labels["copy"]): s.value
          for family in text_string_to_metric_families(metrics.decode())
          for s in family.samples if s.name == "procguard_worker_up"}
    assert up == {("api", "1"): 1, ("api", "2"): 1, ("api", "3"): 1, ("fn", "1"): 1, ("fn", "2"): 1}

    # logs of api: every copy's lines, each prefixed with its copy
    logs = stack.cli("logs", "api", "-n", "30")
    assert logs.returncode == 0, logs.stderr
    assert {line.split(" | ")[0].strip() for line in logs.stdout.splitlines()} == {"api:1", "api:2", "api:3"}

    # stop one copy: only it stops, its port goes, the others keep their pids
    unknown = stack.cli("stop", "api:7")
    assert unknown.returncode == 2
    assert unknown.stderr.strip() == (
        "procguard stop: unknown copy 'api:7': worker api has 3 (use one of: api:1, api:2, api:3)")
    stopped = stack.cli("stop", "api:2")
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.strip() == "api:2 is stopped"
    assert not alive(pids[2])
    assert [stack.worker(f"api:{k}")["pid"] for k in (1, 3)] == [pids[1], pids[3]]
    wait_for(lambda: _refused(port + 1), message="copy 2's port to be released")
    started = stack.cli("start", "api:2")
    assert started.returncode == 0, started.stderr
    pids[2] = stack.wait_state("api:2", "running")["pid"]

    # scale down to 1: copies 3 then 2, the next one only once the one before has stopped
    (directory / "events").unlink()
    scaled = stack.cli("scale", "api", "1")
    assert scaled.returncode == 0, scaled.stderr
    assert scaled.stdout.strip() == "api: 3 -> 1 copies; stopped api:3, api:2 (newest first)"
    events = _events(directory)
    assert [(what, k) for what, k, _t in events] == [("term", "3"), ("exit", "3"), ("term", "2"), ("exit", "2")]
    assert events[1][2] <= events[2][2]  # copy 2 got SIGTERM after copy 3 had stopped
    assert not alive(pids[2]) and not alive(pids[3]) and alive(pids[1])
    assert _names(stack) == ["api:1", "fn:1", "fn:2"]
    rows = [e for e in read_events(db_path(stack.state_dir), project=project, limit=0) if e.event == "stop"]
    scale_stops = [(e.worker, e.reason, e.exit_status, e.detail) for e in reversed(rows)
                   if e.detail == "procguard scale"]
    assert scale_stops == [("api:3", "stopped", 0, "procguard scale"), ("api:2", "stopped", 0, "procguard scale")]
    gone = stack.cli("stop", "api:3")
    assert gone.returncode == 2 and "unknown copy 'api:3'" in gone.stderr

    # scale up to 2: copy 2 starts again, told there are 2, on port P+1
    (directory / "env-2").unlink()
    grown = stack.cli("scale", "api", "2")
    assert grown.returncode == 0, grown.stderr
    assert grown.stdout.splitlines()[0] == "api: 1 -> 2 copies"
    fresh = _facts(directory, "env-2")
    assert fresh["PROCGUARD_INSTANCE_INDEX"] == "2" and fresh["PROCGUARD_INSTANCES"] == "2"
    stack.wait_state("api:2", "running")
    assert get(port + 1, "/health")[0] == 200
    assert _refused(port + 2)

    # history of api: every copy's rows; of api:2: that copy's only
    history = json.loads(stack.cli("history", "--worker", "api", "-n", "0", "--json").stdout)
    assert {e["worker"] for e in history} == {"api:1", "api:2", "api:3"}
    one = json.loads(stack.cli("history", "--worker", "api:2", "-n", "0", "--json").stdout)
    assert {e["worker"] for e in one} == {"api:2"}

    # 'stop api' stops every copy, in one answer with a line per copy
    all_stopped = stack.cli("stop", "api")
    assert all_stopped.returncode == 0, all_stopped.stderr
    assert all_stopped.stdout.splitlines() == ["api:1 is stopped", "api:2 is stopped"]


def test_a_function_worker_runs_two_copies(copies_stack: tuple[Stack, int, int, Path]) -> None:
    stack, port, _status_port, directory = copies_stack
    facts = {k: _facts(directory, f"fn-{k}") for k in (1, 2)}
    pids = {k: stack.wait_state(f"fn:{k}", "running")["pid"] for k in (1, 2)}
    for k in (1, 2):
        assert facts[k]["pid"] == str(pids[k])  # the function runs in the copy's own process
        assert facts[k]["PROCGUARD_INSTANCE_INDEX"] == str(k) and facts[k]["PROCGUARD_INSTANCES"] == "2"
        assert facts[k]["PROCGUARD_INSTANCE"].startswith(f"{stack.project}.fn:{k}:")
        cmdline = Path(f"/proc/{pids[k]}/cmdline").read_bytes().split(b"\0")
        assert cmdline[cmdline.index(b"--name") + 1] == f"{stack.project}.fn:{k}".encode()
        # each copy's port answers from that copy's own published snapshot
        stack.wait_worker(f"fn:{k}", lambda w: w["health"] == "HTTP 200", what="healthy")
        status, _headers, body = get(port + 100 + k - 1, "/metrics", Accept="application/json")
        assert status == 200, body
        assert json.loads(body)["metrics"]["pid"] == pids[k], body
    restarted = stack.cli("restart", "fn:2")
    assert restarted.returncode == 0, restarted.stderr
    new = stack.wait_state("fn:2", "running")["pid"]
    assert new != pids[2] and stack.worker("fn:1")["pid"] == pids[1]


def test_sigkill_of_the_supervisor_leaves_no_copy_behind(tmp_path: Path, state_dir: Path, spawn: Any) -> None:
    directory = tmp_path / "records"
    directory.mkdir()
    config = write_config(tmp_path, {
        "mp": {"command": worker_cmd("copy_worker.py", directory, 2), "instances": 3},
    }, project=f"killed{os.getpid()}", defaults={"grace": "5s"})
    stack = Stack(config, state_dir, spawn, project=f"killed{os.getpid()}", tuning=FAST)
    proc = stack.up()
    facts = {k: _facts(directory, f"env-{k}") for k in (1, 2, 3)}
    everyone = [pid for f in facts.values() for pid in (f["pid"], *f["family"])]
    assert len(set(everyone)) == 12 and all(alive(pid) for pid in everyone)  # 3 copies, 2 children + 1 escaped each
    kill_and_expect_no_survivors(proc, everyone)


def test_check_and_up_refuse_copies_whose_ports_overlap(tmp_path: Path, state_dir: Path) -> None:
    path = tmp_path / "procguard.toml"
    path.write_text("[workers.a]\ncommand = 'x'\ninstances = 3\nhealth_port = 9500\n"
                    "[workers.b]\ncommand = 'y'\nhealth_port = 9502\n")
    expected = (f"{path}: workers.b.health_port: port 9502 is already used by "
                "workers.a.health_port (copy 3 of 3) (use a free port or fewer instances)")
    env = python_env(PROCGUARD_STATE_DIR=str(state_dir))
    for command in ("check", "up"):
        result = subprocess.run([*PROCGUARD, command, "-c", str(path)], env=env, capture_output=True,
                                text=True, timeout=60, check=False)
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip() == f"procguard {command}: {expected}"


def test_scale_refuses_what_it_cannot_do_in_one_line(tmp_path: Path, state_dir: Path, spawn: Any) -> None:
    port = free_ports(4)
    sleeper = worker_cmd("ticker.py", tmp_path / "ticks")
    config = write_config(tmp_path, {
        "a": {"command": sleeper, "instances": 2, "health_port": port},
        "b": {"command": sleeper, "health_port": port + 3},
    }, project=f"refuse{os.getpid()}", defaults={"grace": "5s"})
    stack = Stack(config, state_dir, spawn, project=f"refuse{os.getpid()}", tuning=FAST)
    stack.up()
    for name in ("a:1", "a:2", "b"):
        stack.wait_state(name, "running")
    refused = {
        ("a", "4"): f"procguard scale: cannot scale a to 4: workers.b.health_port: port {port + 3} is already used "
                    "by workers.a.health_port (copy 4 of 4) (use a free port or fewer instances)",
        ("a", "0"): "procguard scale: N: '0' is not a number of copies (use a whole number from 1 to 64)",
        ("a", "65"): "procguard scale: N: '65' is not a number of copies (use a whole number from 1 to 64)",
        ("a:1", "2"): "procguard scale: scale takes a worker, not a copy ('a:1'; use a)",
        ("nope", "2"): "procguard scale: unknown worker 'nope' (use one of: a, b)",
    }
    for (name, count), message in refused.items():
        result = stack.cli("scale", name, count)
        assert (result.returncode, result.stderr.strip()) == (2, message)
    assert _names(stack) == ["a:1", "a:2", "b"]  # nothing started, nothing stopped
    assert _refused(port + 2)
    grown = stack.cli("scale", "a", "3")  # up to the port before b's
    assert grown.returncode == 0, grown.stderr
    stack.wait_state("a:3", "running")
    assert get(port + 2, "/health")[0] == 200
