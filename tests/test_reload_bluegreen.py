"""``listen`` sockets and the blue-green ``procguard reload NAME``: real stacks, real sockets, real load.

What is checked:

- the example api with ``listen`` and two copies serves on the socket the
  supervisor bound (fd 3, ``LISTEN_PID`` its own pid), and three
  ``procguard reload api`` under a steady loopback load fail no request; each
  copy's old process stops only after its new one runs; history has both
  generations; ``down`` releases the port;
- a function worker's new generation that never becomes ready: the reload
  exits 1 within ready_timeout + grace naming why, the old process keeps
  serving (0 failed requests), history has the new one's start and stop;
- a new generation that exits before it is ready: exit 1, the old one stays;
- SIGKILL of the supervisor while two generations of a copy run: no survivor
  of either (children included);
- ``check`` refuses a listen address that clashes with the status port or a
  health port, or is not an address, in one line, exit 2.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.head_to_head.loadgen import LoadGen, summary

from .helpers import PROCGUARD, REPO_ROOT, free_port, python_env, wait_for
from .supervisor_workers.stackkit import (
    Stack,
    alive,
    kill_and_expect_no_survivors,
    lines,
    worker_cmd,
    write_config,
)

FAST = "start_period_s=0.3,sample_interval_s=0.2"


def _history(stack: Stack) -> list[dict[str, Any]]:
    return list(json.loads(stack.cli("history", "--json", "-n", "0").stdout))


def _refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


def _api_stack(tmp_path: Path, state_dir: Path, spawn: Any, port: int) -> Stack:
    api = [sys.executable, "-m", "examples.analyticbot.api", "--port", "1"]  # --port unused with fd 3
    config = write_config(tmp_path, {
        "api": {"command": api, "cwd": str(REPO_ROOT), "listen": f"127.0.0.1:{port}", "instances": 2,
                "env": {"ANALYTICBOT_DATA_DIR": str(tmp_path / "data")}},
    }, project=f"bg{os.getpid()}", defaults={"grace": "5s", "ready_after": "0.5s"})
    stack = Stack(config, state_dir, spawn, project=f"bg{os.getpid()}", tuning=FAST)
    stack.up()
    for name in ("api:1", "api:2"):
        stack.wait_state(name, "running")
    return stack


def test_reloads_of_the_api_under_load_fail_no_request(tmp_path: Path, state_dir: Path, spawn: Any) -> None:
    port = free_port()
    stack = _api_stack(tmp_path, state_dir, spawn, port)
    first = {w["name"]: w["pid"] for w in stack.status() or []}
    log_dir = state_dir / "logs" / stack.project
    for name in ("api:1", "api:2"):  # the program found the socket: LISTEN_FDS and LISTEN_PID = its own pid
        wait_for(lambda name=name: any("socket handed down as fd 3" in line for line in lines(log_dir / f"{name}.log")),
                 message=f"{name} to say it serves on fd 3")

    reloads = []
    with LoadGen(port, "/health", rate=100, threads=8) as load:
        time.sleep(0.5)  # a steady state before the first reload
        for _ in range(3):
            result = stack.cli("reload", "api")
            assert result.returncode == 0, result.stdout + result.stderr
            reloads.append(result.stdout.splitlines())
        time.sleep(0.5)
    figures = summary(load.results)
    assert figures["failed"] == 0, figures
    assert figures["requests"] >= 150, figures

    pids = {name: [pid] for name, pid in first.items()}
    for answer in reloads:
        assert len(answer) == 2, answer
        for line in answer:
            name, _, rest = line.partition(": ")
            old, new = rest.removeprefix("reloaded (pid ").removesuffix(")").split(" -> ")
            assert int(old) == pids[name][-1], (line, pids)
            pids[name].append(int(new))
    assert {w["name"]: w["pid"] for w in stack.status() or []} == {n: p[-1] for n, p in pids.items()}
    assert not any(alive(pid) for p in pids.values() for pid in p[:-1])

    events = _history(stack)
    for name, generations in pids.items():
        for old, new in itertools.pairwise(generations):
            start_new = next(e for e in events if e["event"] == "start" and e["pid"] == new)
            stop_old = next(e for e in events if e["event"] == "stop" and e["pid"] == old)
            assert start_new["worker"] == stop_old["worker"] == name
            assert stop_old["reason"] == "stopped"
            assert stop_old["detail"] == f"procguard reload: replaced by pid {new}"
            assert start_new["time"] < stop_old["time"]  # the new one ran before the old one stopped

    assert stack.cli("down").returncode == 0
    assert _refused(port)  # released with the stack


def test_a_new_process_that_never_gets_ready_leaves_the_old_one_serving(tmp_path: Path, state_dir: Path,
                                                                         spawn: Any) -> None:
    port, health = free_port(), free_port()
    facts, flag = tmp_path / "facts", tmp_path / "not-ready"
    facts.mkdir()
    config = write_config(tmp_path, {
        "fn": {"run": "bench.head_to_head.workers.listener:serve", "cwd": str(REPO_ROOT), "interval": "0.2s",
               "listen": f"127.0.0.1:{port}", "health_port": health,
               "env": {"FACTS_DIR": str(facts), "NOT_READY": str(flag)}},
    }, project=f"nr{os.getpid()}", defaults={"grace": "3s", "ready_timeout": "3s"})
    stack = Stack(config, state_dir, spawn, project=f"nr{os.getpid()}", tuning=FAST)
    stack.up()
    old = stack.wait_state("fn", "running")["pid"]
    found = json.loads(wait_for(lambda: (facts / f"listen-{old}").exists() and (facts / f"listen-{old}").read_text(),
                                message="the worker's facts"))
    assert found == {"LISTEN_FDS": "1", "LISTEN_PID": str(old), "LISTEN_FDNAMES": "fn", "pid": str(old),
                     "sockname": f"127.0.0.1:{port}", "not_ready": False}

    flag.touch()
    with LoadGen(port, "/", rate=100, threads=8) as load:
        started = time.monotonic()
        result = stack.cli("reload", "fn")
        took = time.monotonic() - started
    figures = summary(load.results)
    assert result.returncode == 1, result.stdout + result.stderr
    assert figures["failed"] == 0 and figures["requests"] >= 100, (figures, result.stderr)
    assert took < 3 + 3 + 3, took  # ready_timeout + grace (+ the runner's margin and a loaded machine)
    new = next(e["pid"] for e in _history(stack) if e["event"] == "start" and e["pid"] != old)
    assert result.stderr.strip() == (f"procguard reload: fn: not reloaded: the new process (pid {new}) was not "
                                     f"ready within 3s; pid {old} keeps serving")
    worker = stack.worker("fn")
    assert worker is not None and worker["pid"] == old and worker["state"] == "running"
    assert json.loads((facts / f"listen-{new}").read_text())["not_ready"] is True  # it did run, on the socket
    stop = next(e for e in _history(stack) if e["event"] == "stop" and e["pid"] == new)
    assert stop["detail"] == f"procguard reload: the new process (pid {new}) was not ready within 3s"
    assert not alive(new)


def test_a_new_process_that_exits_first_fails_the_reload(tmp_path: Path, state_dir: Path, spawn: Any) -> None:
    flag = tmp_path / "broken"
    command = ["/bin/sh", "-c", f'test -e "{flag}" && exit 3; exec sleep 300']
    config = write_config(tmp_path, {"w": {"command": command, "ready_after": "5s"}},
                          project=f"ef{os.getpid()}", defaults={"grace": "3s"})
    stack = Stack(config, state_dir, spawn, project=f"ef{os.getpid()}", tuning=FAST)
    stack.up()
    old = stack.wait_state("w", "running")["pid"]
    flag.touch()
    result = stack.cli("reload", "w")
    assert result.returncode == 1
    assert "w: not reloaded: the new process exited before it was ready: crashed" in result.stderr, result.stderr
    assert result.stderr.strip().endswith(f"; pid {old} keeps serving")
    worker = stack.worker("w")
    assert worker is not None and worker["pid"] == old and worker["state"] == "running"
    assert worker["restarts"] == 0  # the failed generation is not a restart of the copy


def test_sigkill_of_the_supervisor_with_two_generations_leaves_none(tmp_path: Path, state_dir: Path,
                                                                   spawn: Any) -> None:
    directory = tmp_path / "records"
    directory.mkdir()
    project = f"kg{os.getpid()}"
    config = write_config(tmp_path, {
        "mp": {"command": worker_cmd("copy_worker.py", directory, 2), "ready_after": "60s",
               "ready_timeout": "120s"},
    }, project=project, defaults={"grace": "5s"})
    stack = Stack(config, state_dir, spawn, project=project, tuning=FAST)
    proc = stack.up()
    stack.wait_state("mp", "running")
    path = directory / "env-1"
    old = wait_for(lambda: path.exists() and json.loads(path.read_text()), message="the first generation's facts")
    env = {**stack.env, "PROCGUARD_LOG_LEVEL": "WARNING"}
    spawn([*PROCGUARD, "reload", "mp", "-c", str(config)], env=env)  # waits 60s for the new one: killed first
    new = wait_for(lambda: (facts := json.loads(path.read_text()))["pid"] != old["pid"] and facts,
                   message="the second generation's facts")
    everyone = [pid for facts in (old, new) for pid in (facts["pid"], *facts["family"])]
    assert len(set(everyone)) == 8 and all(alive(pid) for pid in everyone)  # 2 generations, 3 children each
    kill_and_expect_no_survivors(proc, everyone)


def test_check_refuses_a_listen_address_that_clashes_or_is_not_one(tmp_path: Path, state_dir: Path) -> None:
    path = tmp_path / "procguard.toml"
    env = python_env(PROCGUARD_STATE_DIR=str(state_dir))
    cases = {
        "[project]\nstatus_port = 9400\n[workers.a]\ncommand = 'x'\nlisten = '127.0.0.1:9400'\n":
            "workers.a.listen: port 9400 is already used by project.status_port (use a free port)",
        "[workers.a]\ncommand = 'x'\nlisten = '127.0.0.1:9401'\n[workers.b]\ncommand = 'y'\nhealth_port = 9401\n":
            "workers.b.health_port: port 9401 is already used by workers.a.listen (use a free port)",
        "[workers.a]\ncommand = 'x'\nlisten = '9402'\n":
            'workers.a.listen: \'9402\' is not an address (use "HOST:PORT", e.g. "127.0.0.1:8080", '
            '"0.0.0.0:8080" or "[::1]:8080")',
        "[defaults]\nlisten = '127.0.0.1:9403'\n[workers.a]\ncommand = 'x'\n":
            "defaults.listen: applies to one worker only (put it in [workers.NAME])",
    }
    for text, expected in cases.items():
        path.write_text(text)
        result = subprocess.run([*PROCGUARD, "check", "-c", str(path)], env=env, capture_output=True,
                                text=True, timeout=60, check=False)
        assert result.returncode == 2, (text, result.stdout, result.stderr)
        assert result.stderr.strip() == f"procguard check: {path}: {expected}"


def test_deploy_says_in_one_line_that_listen_is_not_carried_over(tmp_path: Path, state_dir: Path) -> None:
    path = tmp_path / "procguard.toml"
    path.write_text("[project]\nname = 'dl'\n[workers.api]\ncommand = 'python3 -m api'\nlisten = '127.0.0.1:9410'\n"
                    "[workers.other]\ncommand = 'python3 -m other'\n")
    env = python_env(PROCGUARD_STATE_DIR=str(state_dir))
    check = subprocess.run([*PROCGUARD, "check", "-c", str(path)], env=env, capture_output=True, text=True,
                           timeout=60, check=False)
    assert check.returncode == 0 and ", listen 127.0.0.1:9410)" in check.stdout.splitlines()[1], check.stdout
    why = {
        "systemd": "no .socket unit: the unit's main process is procguard run, which does not pass a socket on",
        "supervisor": "supervisord shares no listening socket between plain programs",
        "kubernetes": "pods share no socket: put a Service in front of them, rolling updates keep it answering",
    }
    for target, reason in why.items():
        image = ["--image", "example/api:1"] if target == "kubernetes" else []
        result = subprocess.run([*PROCGUARD, "deploy", target, "-c", str(path), "-o", str(tmp_path / target), *image],
                                env=env, capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0, result.stderr
        notes = [line for line in result.stderr.splitlines() if " note: " in line]  # warnings may come too
        assert notes == [
            f"procguard deploy {target}: note: workers.api.listen = '127.0.0.1:9410' is not carried over "
            f"({reason}); the program binds its own port there"
        ]


def test_reload_of_one_copy_a_stopped_copy_and_a_copy_already_reloading(tmp_path: Path, state_dir: Path,
                                                                        spawn: Any) -> None:
    project = f"rc{os.getpid()}"
    config = write_config(tmp_path, {"w": {"command": ["sleep", "300"], "instances": 3, "ready_after": "3s"}},
                          project=project, defaults={"grace": "3s"})
    stack = Stack(config, state_dir, spawn, project=project, tuning=FAST)
    stack.up()
    pids = {name: stack.wait_state(name, "running")["pid"] for name in ("w:1", "w:2", "w:3")}
    assert stack.cli("stop", "w:3").returncode == 0

    env = {**stack.env, "PROCGUARD_LOG_LEVEL": "WARNING"}
    first = spawn([*PROCGUARD, "reload", "w:2", "-c", str(config)], env=env)
    wait_for(lambda: sum(e["event"] == "start" for e in _history(stack)) == 4, message="w:2's new process")
    new = next(e["pid"] for e in _history(stack) if e["event"] == "start")  # newest first
    reloading = stack.worker("w:2")
    assert reloading is not None and reloading["pid"] == pids["w:2"]  # the old one serves until the switch
    assert reloading["next_generation"]["pid"] == new and reloading["next_generation"]["state"] in ("starting",
                                                                                                    "running")
    again = stack.cli("reload", "w")  # w:2 is being reloaded, w:3 is stopped: only w:1 is reloaded
    assert again.returncode == 1
    assert again.stderr.splitlines() == [
        "procguard reload: w:2: a reload is already under way (wait for it to finish)",
        "procguard reload: w:3 is stopped: not reloaded (use 'procguard start w:3')",
    ]
    assert again.stdout.startswith(f"w:1: reloaded (pid {pids['w:1']} -> ")
    assert first.wait(timeout=30) == 0
    after = {w["name"]: w["pid"] for w in stack.status() or []}
    assert after["w:1"] != pids["w:1"] and after["w:2"] == new and after["w:3"] is None
    assert all(w["next_generation"] is None for w in stack.status() or [])
