"""The stack commands as a user types them: names, exit statuses, output."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .helpers import PROCGUARD, python_env, wait_for, wait_for_file
from .supervisor_workers.stackkit import Stack, worker_cmd, write_config

FAST = "start_period_s=0.3,sample_interval_s=0.2"
STATUS_KEYS = {"name", "state", "pid", "restarts", "uptime_seconds", "memory_mb", "last_exit"}


@pytest.fixture
def stack(tmp_path: Path, state_dir: Path, spawn: Any) -> Stack:
    config = write_config(tmp_path, {
        "api": {"command": worker_cmd("slowstop.py", tmp_path / "api", 0)},
        "worker": {"command": worker_cmd("ticker.py", tmp_path / "ticks")},
    }, defaults={"grace": "5s"}, log_max_bytes=1500, log_backups=1)
    return Stack(config, state_dir, spawn, tuning=FAST)


@pytest.mark.parametrize("argv", [
    ["up", "nope"], ["up", "api", "nope"], ["stop", "nope"], ["start", "nope"], ["restart", "nope"],
    ["logs", "nope"], ["history", "--worker", "nope"],
])
def test_unknown_worker_name_is_a_usage_error_listing_known_ones(stack: Stack, argv: list[str]) -> None:
    result = stack.cli(*argv)
    assert result.returncode == 2
    assert "unknown worker 'nope'" in result.stderr
    assert "use one of: api, worker" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_commands_without_a_supervisor(stack: Stack) -> None:
    for command in (["status"], ["status", "--json"], ["stop", "api"], ["start", "api"], ["restart", "api"]):
        result = stack.cli(*command)
        assert result.returncode == 3, (command, result.stderr)
        assert "no supervisor is running for stack 'teststack'" in result.stderr
    down = stack.cli("down")
    assert down.returncode == 0 and "not running" in down.stdout
    history = stack.cli("history", "--json")
    assert history.returncode == 0 and json.loads(history.stdout) == []
    logs = stack.cli("logs", "api")
    assert logs.returncode == 1 and "no log" in logs.stderr


def test_missing_config_and_bad_flags(tmp_path: Path, state_dir: Path) -> None:
    env = python_env(PROCGUARD_STATE_DIR=str(state_dir))
    missing = subprocess.run([*PROCGUARD, "status", "-c", str(tmp_path / "none.toml")], env=env,
                             capture_output=True, text=True, timeout=60, check=False)
    assert missing.returncode == 2 and "none.toml" in missing.stderr
    bad = subprocess.run([*PROCGUARD, "logs", "x", "-n", "many", "-c", str(tmp_path / "none.toml")], env=env,
                         capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 2


def test_status_stop_start_restart_logs_history(stack: Stack, tmp_path: Path) -> None:
    proc = stack.up()
    stack.wait_state("api", "running")
    stack.wait_state("worker", "running")

    status = stack.cli("status", "--json")
    assert status.returncode == 0, status.stderr
    workers = json.loads(status.stdout)
    assert [w["name"] for w in workers] == ["api", "worker"]
    for worker in workers:
        assert set(worker) >= STATUS_KEYS
        assert worker["state"] == "running" and isinstance(worker["pid"], int)
        assert worker["restarts"] == 0 and worker["last_exit"] is None
        assert worker["uptime_seconds"] >= 0
    wait_for(lambda: (stack.worker("api") or {}).get("memory_mb"), message="a memory sample")

    table = stack.cli("status")
    assert table.returncode == 0
    assert table.stdout.splitlines()[1].split()[:4] == ["NAME", "STATE", "PID", "UPTIME"]
    assert "api" in table.stdout and "running" in table.stdout

    old_pid = workers[0]["pid"]
    stop = stack.cli("stop", "api")
    assert stop.returncode == 0 and "api is stopped" in stop.stdout
    assert stack.worker("api")["state"] == "stopped"  # type: ignore[index]
    assert stack.cli("stop", "api").stdout.strip() == "api is already stopped"
    start = stack.cli("start", "api")
    assert start.returncode == 0 and "api is starting" in start.stdout
    restart = stack.cli("restart", "api")
    assert restart.returncode == 0, restart.stderr
    api = stack.wait_state("api", "running")
    assert api["pid"] != old_pid and api["restarts"] == 1
    assert api["last_exit"]["reason"] == "requested"

    wait_for(lambda: stack.cli("logs", "worker", "-n", "3").stdout.count("tick from") == 3,
             message="three lines of the ticker's log")
    logs = stack.cli("logs", "worker", "-n", "3").stdout.splitlines()
    assert all(line.split(" ", 1)[1].startswith("tick from") for line in logs)
    log_files = sorted(p.name for p in (stack.state_dir / "logs" / "teststack").iterdir())
    wait_for((stack.state_dir / "logs" / "teststack" / "worker.log.1").exists,
             message=f"rotation of worker.log (files: {log_files})")

    follower = stack.spawn([*PROCGUARD, "logs", "worker", "-f", "-n", "0", "-c", str(stack.config)],
                           env=stack.env)
    assert follower.stdout is not None
    line = follower.stdout.readline().decode()
    assert "tick from" in line

    history = json.loads(stack.cli("history", "--json", "-n", "0").stdout)
    api_events = [(e["event"], e["reason"]) for e in history if e["worker"] == "api"]
    assert api_events[:2] == [("start", None), ("stop", "requested")]
    assert api_events[-1] == ("start", None)
    newest_first = [e["time"] for e in history]
    assert newest_first == sorted(newest_first, reverse=True)
    assert len(json.loads(stack.cli("history", "--json", "-n", "2").stdout)) == 2
    only = json.loads(stack.cli("history", "--json", "--worker", "worker").stdout)
    assert {e["worker"] for e in only} == {"worker"}
    text = stack.cli("history").stdout.splitlines()
    assert text[0].split()[:3] == ["TIME", "WORKER", "EVENT"]

    assert stack.cli("down").returncode == 0
    assert proc.wait(timeout=20) == 0
    wait_for_file(stack.out_path)
    assert "api       |" in stack.output() or "api    |" in stack.output()


def test_up_status_port_flag_is_validated(stack: Stack) -> None:
    result = stack.cli("up", "--status-port", "99999")
    assert result.returncode == 2 and "--status-port" in result.stderr
