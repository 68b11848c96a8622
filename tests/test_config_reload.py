"""procguard reload and SIGHUP: a running stack takes an edited procguard.toml, and only the difference.

Real supervisors, real workers: an added worker runs, a removed one is stopped gracefully (a history
row says why), a changed one runs again with its new settings (new PID, new limit in status --json),
an unchanged one keeps its PID; an invalid edit or one the running stack cannot take changes nothing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

from .helpers import PROCGUARD, free_port, wait_for
from .supervisor_workers.stackkit import Stack, worker_cmd, write_config

FAST = "start_period_s=0.3,sample_interval_s=0.2"


def _workers(tmp_path: Path) -> dict[str, dict[str, Any]]:
    return {
        "keep": {"command": worker_cmd("slowstop.py", tmp_path / "keep", 0)},
        "chg": {"command": worker_cmd("slowstop.py", tmp_path / "chg", 0), "memory_limit": "200MB"},
        "gone": {"command": worker_cmd("slowstop.py", tmp_path / "gone", 0)},
    }


def _edited(tmp_path: Path) -> dict[str, dict[str, Any]]:
    workers = _workers(tmp_path)
    del workers["gone"]
    workers["chg"]["memory_limit"] = "300MB"
    workers["new"] = {"command": worker_cmd("slowstop.py", tmp_path / "new", 0), "depends_on": ["keep"]}
    return workers


def _start(tmp_path: Path, state_dir: Path, spawn: Any, **project: Any) -> Stack:
    config = write_config(tmp_path, _workers(tmp_path), defaults={"grace": "5s"}, **project)
    stack = Stack(config, state_dir, spawn, tuning=FAST)
    stack.up()
    for name in ("keep", "chg", "gone"):
        stack.wait_state(name, "running")
    return stack


def _by_name(stack: Stack) -> dict[str, dict[str, Any]]:
    return {w["name"]: w for w in stack.status() or []}


def _check_applied(stack: Stack, before: dict[str, dict[str, Any]]) -> None:
    after = _by_name(stack)
    assert list(after) == ["keep", "chg", "new"], after.keys()
    assert after["keep"]["pid"] == before["keep"]["pid"] and after["keep"]["restarts"] == 0
    assert after["chg"]["pid"] != before["chg"]["pid"] and after["chg"]["memory_limit_mb"] == 300.0
    # A running worker whose settings changed is reloaded blue-green: the new process first, then the old stops.
    assert after["chg"]["last_exit"]["detail"] == f"procguard reload: replaced by pid {after['chg']['pid']}"
    assert after["chg"]["restarts"] == 1
    assert after["new"]["state"] in ("starting", "running") and after["new"]["pid"]
    gone = [e for e in json.loads(stack.cli("history", "--json", "-n", "0").stdout) if e["worker"] == "gone"]
    assert gone[0]["event"] == "stop" and gone[0]["reason"] == "stopped"
    assert gone[0]["detail"] == "procguard reload: removed from procguard.toml"
    assert gone[0]["pid"] == before["gone"]["pid"]


def test_reload_adds_removes_changes_and_leaves_the_rest_alone(tmp_path: Path, state_dir: Path,
                                                               spawn: Any) -> None:
    stack = _start(tmp_path, state_dir, spawn)
    before = _by_name(stack)
    assert before["chg"]["memory_limit_mb"] == 200.0

    write_config(tmp_path, _edited(tmp_path), defaults={"grace": "5s"})
    result = stack.cli("reload")
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    assert out[0] == "gone: removed"
    assert out[1] == (f"chg: changed: memory_limit 200MB -> 300MB (reloaded (pid {before['chg']['pid']} -> "
                      f"{_by_name(stack)['chg']['pid']}))")
    assert out[2].startswith("new: added (new is starting (pid ")
    assert out[3:] == ["1 unchanged"]
    _check_applied(stack, before)
    assert not os.path.exists(f"/proc/{before['gone']['pid']}") or \
        open(f"/proc/{before['gone']['pid']}/stat").read().split()[2] == "Z"  # noqa: SIM115

    again = stack.cli("reload")  # the file is what runs now: nothing to do, nobody touched
    assert again.returncode == 0 and again.stdout.strip() == "nothing changed (3 workers unchanged)"
    assert {n: w["pid"] for n, w in _by_name(stack).items()} == {n: w["pid"] for n, w in _by_name(stack).items()}

    up_again = stack.cli("up", "-d")
    assert up_again.returncode == 0 and "nothing started" in up_again.stdout
    assert "procguard reload" in up_again.stdout


def test_an_invalid_edit_changes_nothing(tmp_path: Path, state_dir: Path, spawn: Any) -> None:
    stack = _start(tmp_path, state_dir, spawn)
    pids = {n: w["pid"] for n, w in _by_name(stack).items()}
    text = stack.config.read_text()
    stack.config.write_text(text + '\n[workers.broken]\ncommand = "sleep 1"\nmemory_limit = "lots"\n')
    check = stack.cli("check")
    assert check.returncode == 2
    # From another directory and without -c, so that the running supervisor reads the file itself.
    env = {**stack.env, "PROCGUARD_LOG_LEVEL": "WARNING"}
    reload = subprocess.run([*PROCGUARD, "reload"], env=env, cwd=tmp_path.parent, capture_output=True,
                            text=True, timeout=60, check=False)
    assert reload.returncode == 2
    assert reload.stderr.splitlines() == [check.stderr.strip().replace("procguard check:", "procguard reload:")]
    assert {n: w["pid"] for n, w in _by_name(stack).items()} == pids

    # A change the running stack cannot take (its status port), beside valid edits: none applied.
    stack.config.write_text(text.replace('name = "teststack"', f'name = "teststack"\nstatus_port = {free_port()}')
                            + '\n[workers.extra]\ncommand = "sleep 100"\n')
    refused = stack.cli("reload")
    assert refused.returncode == 2
    assert len(refused.stderr.splitlines()) == 1 and "project.status_port changed (0 -> " in refused.stderr
    assert {n: w["pid"] for n, w in _by_name(stack).items()} == pids


def test_sighup_to_the_supervisor_reloads_like_the_command(tmp_path: Path, state_dir: Path, spawn: Any) -> None:
    stack = _start(tmp_path, state_dir, spawn)
    assert stack.proc is not None
    before = _by_name(stack)
    pids = {n: w["pid"] for n, w in before.items()}

    good = stack.config.read_text()
    stack.config.write_text(good + "\nnot toml at all\n")
    os.kill(stack.proc.pid, signal.SIGHUP)
    wait_for(lambda: "SIGHUP: " in stack.output() and "nothing changed" in stack.output(),
             message=lambda: f"the supervisor's error line; output:\n{stack.output()[-2000:]}")
    assert stack.proc.poll() is None
    assert {n: w["pid"] for n, w in _by_name(stack).items()} == pids

    write_config(tmp_path, _edited(tmp_path), defaults={"grace": "5s"})
    os.kill(stack.proc.pid, signal.SIGHUP)
    stack.wait_state("new", "running")
    stack.wait_worker("chg", lambda w: w["pid"] not in (None, pids["chg"]) and w["last_exit"] is not None,
                      what="reloaded (new process in, old one stopped)")
    wait_for(lambda: "gone" not in _by_name(stack), message="gone to leave the stack")
    _check_applied(stack, before)
    assert "gone: removed" in stack.output() and "1 unchanged" in stack.output()


def _answering_pid(port: int) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return int(json.loads(response.read())["metrics"]["pid"])
    except (OSError, ValueError, KeyError):
        return None


def test_workers_trading_health_ports_wait_for_each_other(tmp_path: Path, state_dir: Path, spawn: Any) -> None:
    ports = [free_port(), free_port()]
    workers = {name: {"command": worker_cmd("slowstop.py", tmp_path / name, delay), "health_port": port}
               for name, delay, port in (("a", 0, ports[0]), ("b", 0.3, ports[1]))}
    config = write_config(tmp_path, workers, defaults={"grace": "5s"})
    stack = Stack(config, state_dir, spawn, tuning=FAST)
    stack.up()
    for name in ("a", "b"):
        stack.wait_state(name, "running")
    workers["a"]["health_port"], workers["b"]["health_port"] = ports[1], ports[0]
    write_config(tmp_path, workers, defaults={"grace": "5s"})

    result = stack.cli("reload")
    assert result.returncode == 0, result.stderr
    assert [line.split(" (")[0] for line in result.stdout.splitlines()] == [
        f"a: changed: health_port {ports[0]} -> {ports[1]}", f"b: changed: health_port {ports[1]} -> {ports[0]}"]
    now = _by_name(stack)
    wait_for(lambda: _answering_pid(ports[1]) == now["a"]["pid"] and _answering_pid(ports[0]) == now["b"]["pid"],
             message=lambda: f"each port answering for its new worker: {now}")
    crashed = [e for e in json.loads(stack.cli("history", "--json", "-n", "0").stdout) if e["reason"] == "crashed"]
    assert crashed == [], "a worker tried its new port before the other let go of it"


def test_reload_of_instances_adds_and_removes_copies_and_leaves_the_others_running(
    tmp_path: Path, state_dir: Path, spawn: Any
) -> None:
    """A changed ``instances`` alone: missing copies start, the highest-numbered go, the rest keep their PIDs."""
    def workers(count: int) -> dict[str, dict[str, Any]]:
        return {"w": {"command": worker_cmd("slowstop.py", tmp_path / "w", 0), "instances": count}}

    config = write_config(tmp_path, workers(1), defaults={"grace": "5s"})
    stack = Stack(config, state_dir, spawn, tuning=FAST)
    stack.up()
    stack.wait_state("w", "running")
    first = _by_name(stack)["w"]["pid"]

    write_config(tmp_path, workers(3), defaults={"grace": "5s"})
    grown = stack.cli("reload")
    assert grown.returncode == 0, grown.stderr
    assert [line.split()[0] for line in grown.stdout.splitlines()] == ["w:2:", "w:3:"]
    assert all("changed: instances 1 -> 3" in line for line in grown.stdout.splitlines())
    for name in ("w:2", "w:3"):
        stack.wait_state(name, "running")
    after = _by_name(stack)
    assert list(after) == ["w", "w:2", "w:3"] and after["w"]["pid"] == first

    write_config(tmp_path, workers(2), defaults={"grace": "5s"})
    shrunk = stack.cli("reload")
    assert shrunk.returncode == 0, shrunk.stderr
    assert shrunk.stdout.splitlines() == ["w:3: removed"]
    wait_for(lambda: list(_by_name(stack)) == ["w", "w:2"], message="copy 3 gone")
    final = _by_name(stack)
    assert final["w"]["pid"] == first and final["w:2"]["pid"] == after["w:2"]["pid"]
