"""start/stop/restart with globs and 'all', and procguard signal, against a real supervisor and real
worker processes."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path
from typing import Any

from .helpers import wait_for
from .supervisor_workers.stackkit import Stack, lines, worker_cmd, write_config

FAST = "start_period_s=0.3,sample_interval_s=0.2"


def _pids(stack: Stack) -> dict[str, Any]:
    return {w["name"]: w["pid"] for w in stack.status() or []}


def _history(stack: Stack) -> list[dict[str, Any]]:
    return list(json.loads(stack.cli("history", "--json", "-n", "0").stdout))


def test_stop_start_restart_by_glob_and_all_in_dependency_order(tmp_path: Path, state_dir: Path, spawn: Any) -> None:
    config = write_config(tmp_path, {
        "w1": {"command": worker_cmd("slowstop.py", tmp_path / "w1", 0)},
        # w2 takes 0.5 s to stop: w1, which it depends on, must wait for it
        "w2": {"command": worker_cmd("slowstop.py", tmp_path / "w2", 0.5), "depends_on": ["w1"]},
        "other": {"command": worker_cmd("slowstop.py", tmp_path / "other", 0)},
    }, defaults={"grace": "5s"})
    stack = Stack(config, state_dir, spawn, tuning=FAST)
    stack.up()
    for name in ("w1", "w2", "other"):
        stack.wait_state(name, "running")
    before = _pids(stack)

    nothing = stack.cli("stop", "zz*")
    assert nothing.returncode == 2
    assert nothing.stderr.strip().splitlines() == [
        "procguard stop: no worker matches 'zz*' (use one of: w1, w2, other)"]
    mixed = stack.cli("stop", "w1", "nope")  # one bad word: nothing is done, not even w1
    assert mixed.returncode == 2 and "unknown worker 'nope'" in mixed.stderr
    assert _pids(stack) == before

    stop = stack.cli("stop", "w*")
    assert stop.returncode == 0, stop.stderr
    assert stop.stdout.splitlines() == ["w1 is stopped", "w2 is stopped"]
    status = {w["name"]: w for w in stack.status() or []}
    assert status["w1"]["state"] == status["w2"]["state"] == "stopped"
    assert status["other"]["state"] == "running" and status["other"]["pid"] == before["other"]
    stops = {e["worker"]: e for e in _history(stack) if e["event"] == "stop"}
    assert set(stops) == {"w1", "w2"}
    assert stops["w1"]["time"] >= stops["w2"]["time"], "w1 stopped before what depends on it"
    assert stops["w1"]["detail"] == stops["w2"]["detail"] == "procguard stop"

    start = stack.cli("start", "all")
    assert start.returncode == 0, start.stderr
    assert re.fullmatch(r"w1 is starting \(pid \d+\)\nw2 is starting \(pid \d+\)\nother is already running\n",
                        start.stdout), start.stdout
    starts = [e for e in _history(stack) if e["event"] == "start"]
    w1_start = next(e["time"] for e in starts if e["worker"] == "w1")
    w2_start = next(e["time"] for e in starts if e["worker"] == "w2")
    assert w2_start >= w1_start + 0.25, "w2 started before w1 ran for its start period"

    restart = stack.cli("restart", "w?", "other")
    assert restart.returncode == 0, restart.stderr
    assert [line.split()[0] for line in restart.stdout.splitlines()] == ["w1", "w2", "other"]
    after = _pids(stack)
    assert all(after[name] != before[name] for name in ("w1", "w2", "other"))

    stop_all = stack.cli("stop", "all")
    assert stop_all.returncode == 0, stop_all.stderr
    assert stop_all.stdout.splitlines() == ["w1 is stopped", "w2 is stopped", "other is stopped"]
    assert {w["state"] for w in stack.status() or []} == {"stopped"}
    again = stack.cli("stop", "all")
    assert again.stdout.splitlines() == [f"{n} is already stopped" for n in ("w1", "w2", "other")]


def test_signal_reaches_the_workers_main_process(tmp_path: Path, state_dir: Path, spawn: Any) -> None:
    config = write_config(tmp_path, {
        "rec": {"command": worker_cmd("sigrecorder.py", tmp_path / "rec")},
        "rec2": {"command": worker_cmd("sigrecorder.py", tmp_path / "rec2")},
        "off": {"command": worker_cmd("slowstop.py", tmp_path / "off", 0)},
    }, defaults={"grace": "5s"})
    stack = Stack(config, state_dir, spawn, tuning=FAST)
    stack.up()
    for name in ("rec", "rec2", "off"):
        stack.wait_state(name, "running")
    for name in ("rec", "rec2"):
        wait_for(lambda name=name: any(line.startswith("ready") for line in lines(tmp_path / name)),
                 message=f"{name}'s signal handlers")
    pids = _pids(stack)

    hup = stack.cli("signal", "rec*", "HUP")
    assert hup.returncode == 0, hup.stderr
    assert hup.stdout.splitlines() == [f"rec: SIGHUP sent to pid {pids['rec']}",
                                       f"rec2: SIGHUP sent to pid {pids['rec2']}"]
    for name in ("rec", "rec2"):
        wait_for(lambda name=name: f"SIGHUP {pids[name]}" in lines(tmp_path / name), message=f"{name} got HUP")
    for spelled, recorded in (("SIGUSR1", "SIGUSR1"), ("12", "SIGUSR2")):
        result = stack.cli("signal", "rec", spelled)
        assert result.returncode == 0, result.stderr
        wait_for(lambda recorded=recorded: f"{recorded} {pids['rec']}" in lines(tmp_path / "rec"),
                 message=f"rec got {recorded}")

    assert stack.cli("stop", "off").returncode == 0
    partly = stack.cli("signal", "all", "usr2")
    assert partly.returncode == 1
    assert partly.stdout.splitlines() == [f"rec: SIGUSR2 sent to pid {pids['rec']}",
                                          f"rec2: SIGUSR2 sent to pid {pids['rec2']}"]
    assert partly.stderr.strip() == "procguard signal: off is stopped: not signalled"
    wait_for(lambda: f"SIGUSR2 {pids['rec2']}" in lines(tmp_path / "rec2"), message="rec2 got USR2")

    realtime = stack.cli("signal", "off", "40")  # a number without a name of its own, to a stopped worker
    assert realtime.returncode == 1 and realtime.stderr.strip() == "procguard signal: off is stopped: not signalled"

    bad = stack.cli("signal", "rec", "FOO")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "procguard signal: 'FOO' is not a signal (use a name or number such as HUP, SIGUSR1, TERM or 10)"]
    status = {w["name"]: w for w in stack.status() or []}
    assert status["rec"]["pid"] == pids["rec"] and status["rec"]["restarts"] == 0  # handled, still running
    assert status["rec2"]["pid"] == pids["rec2"]

    # A signal the program does not handle ends it: the operator's signal, not one "from outside procguard".
    assert stack.cli("start", "off").returncode == 0
    stack.wait_state("off", "running")
    killed = stack.cli("signal", "off", "USR1")
    assert killed.returncode == 0, killed.stderr

    def stop_row() -> dict[str, Any] | None:
        rows = [e for e in _history(stack) if e["worker"] == "off" and e["event"] == "stop"]
        return rows[0] if rows and rows[0]["exit_status"] == 128 + signal.SIGUSR1 else None

    row = wait_for(stop_row, message=lambda: f"off's stop row after SIGUSR1: {_history(stack)[:3]}")
    assert (row["reason"], row["by"]) == ("killed", "operator"), row
    assert row["detail"] == "SIGUSR1 sent with 'procguard signal'", row
