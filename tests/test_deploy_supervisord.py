"""The generated supervisord group runs under a real supervisord.

supervisord (from PyPI, in this environment) is started in the foreground
as the test's child with a unix socket in a temporary directory, and
includes the file ``procguard deploy supervisor`` wrote. Checked: every
program reaches RUNNING; ``supervisorctl stop all`` leaves no process of
the stack alive, multiprocessing grandchildren included; a planned recycle
(exit status 80 at max_runtime) is restarted and never goes FATAL.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from procguard.cli.main import main

from .conftest import Spawn
from .helpers import GLOBAL_TIMEOUT, python_env, read_output, wait_for

BIN = Path(sys.executable).parent
SUPERVISORD = BIN / "supervisord"
SUPERVISORCTL = BIN / "supervisorctl"

pytestmark = pytest.mark.skipif(not SUPERVISORD.exists(), reason="supervisor is not installed in this environment")

TREE_WORKER = """
import multiprocessing, os, time

def child():
    time.sleep(3600)

if __name__ == "__main__":
    children = [multiprocessing.Process(target=child) for _ in range(4)]
    for c in children:
        c.start()
    print("tree ready", os.getpid(), flush=True)
    time.sleep(3600)
"""


def _stack(tmp_path: Path) -> Path:
    (tmp_path / "tree.py").write_text(TREE_WORKER)
    logs = tmp_path / "logs"
    logs.mkdir()
    py = json.dumps(sys.executable)
    config = tmp_path / "procguard.toml"
    config.write_text(
        f"""
[project]
name = "shop"

[defaults]
grace = "5s"
memory_limit = "512MB"

[workers.tree]
command = [{py}, {json.dumps(str(tmp_path / "tree.py"))}]

[workers.sleeper]
command = [{py}, "-c", "import time; time.sleep(3600)"]
env = {{ GREETING = "50% off, say 'hi' now" }}

[workers.recycler]
command = [{py}, "-c", "import time; time.sleep(3600)"]
max_runtime = "2s"
depends_on = ["sleeper"]

[workers.recycler2]
command = [{py}, "-c", "import time; time.sleep(3600)"]
max_runtime = "2s"
restart = "on-failure"

[deploy.supervisor]
log_dir = {json.dumps(str(logs))}
startsecs = 1
"""
    )
    return config


def _main_conf(tmp_path: Path, include: Path) -> Path:
    conf = tmp_path / "supervisord.conf"
    conf.write_text(
        f"""
[unix_http_server]
file={tmp_path}/supervisor.sock
chmod=0700

[supervisord]
nodaemon=true
logfile={tmp_path}/supervisord.log
pidfile={tmp_path}/supervisord.pid
childlogdir={tmp_path}/logs
loglevel=info

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{tmp_path}/supervisor.sock

[include]
files={include}
"""
    )
    return conf


def _status(conf: Path) -> dict[str, tuple[str, int | None]]:
    result = subprocess.run(  # noqa: PLW1510 - the status is asserted
        [str(SUPERVISORCTL), "-c", str(conf), "status"], capture_output=True, text=True, timeout=30
    )
    states: dict[str, tuple[str, int | None]] = {}
    for line in result.stdout.splitlines():
        match = re.match(r"(\S+)\s+(\S+)\s*(?:pid (\d+))?", line)
        if match and ":" in match.group(1):
            states[match.group(1)] = (match.group(2), int(match.group(3)) if match.group(3) else None)
    return states


def _alive(pids: set[int]) -> set[int]:
    """PIDs still running; zombies count as gone (and are reaped if they are ours)."""
    alive = set()
    for pid in pids:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass
                continue
        except psutil.NoSuchProcess:
            continue
        alive.add(pid)
    return alive


@pytest.fixture
def supervisord(tmp_path: Path, spawn: Spawn, state_dir: Path):  # type: ignore[no-untyped-def]
    config = _stack(tmp_path)
    out = tmp_path / "deploy"
    assert main(["deploy", "supervisor", "-c", str(config), "-o", str(out)]) == 0
    conf = _main_conf(tmp_path, out / "shop.conf")
    proc = spawn([str(SUPERVISORD), "-n", "-c", str(conf)], env=python_env(), cwd=str(tmp_path))

    def all_running() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"supervisord exited {proc.returncode}:\n{read_output(proc)}")
        states = _status(conf)
        return len(states) == 4 and all(state == "RUNNING" for state, _pid in states.values())

    wait_for(all_running, timeout=GLOBAL_TIMEOUT * 2, message=lambda: f"all programs RUNNING: {_status(conf)}")
    return proc, conf


@pytest.mark.slow
def test_programs_run_and_stop_all_leaves_no_process(supervisord) -> None:  # type: ignore[no-untyped-def]
    proc, conf = supervisord
    states = _status(conf)
    assert set(states) == {"shop:tree", "shop:sleeper", "shop:recycler", "shop:recycler2"}
    tree_runner = psutil.Process(states["shop:tree"][1])
    assert "procguard" in " ".join(tree_runner.cmdline())

    # the tree worker's 4 multiprocessing children are up (runner -> python -> 4 children)
    wait_for(
        lambda: len(tree_runner.children(recursive=True)) >= 5,
        message=lambda: f"tree worker with 4 children, have {tree_runner.children(recursive=True)}",
    )
    stack = {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
    assert len(stack) >= 3 + 2 + 4

    # the environment value survived supervisord's quoting
    sleeper = psutil.Process(states["shop:sleeper"][1])
    assert sleeper.environ()["GREETING"] == "50% off, say 'hi' now"

    result = subprocess.run(  # noqa: PLW1510 - the status is asserted
        [str(SUPERVISORCTL), "-c", str(conf), "stop", "all"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    wait_for(lambda: not _alive(stack), message=lambda: f"no survivors, alive: {_alive(stack)}")
    # nothing new either (a recycler may have been between two runs when "stop all" came)
    wait_for(
        lambda: not _alive({p.pid for p in psutil.Process(proc.pid).children(recursive=True)}),
        message="supervisord without children",
    )
    assert all(state in ("STOPPED", "EXITED") for state, _pid in _status(conf).values()), _status(conf)
    assert proc.poll() is None, "supervisord itself keeps running"


@pytest.mark.slow
def test_planned_recycle_is_restarted_without_going_fatal(supervisord, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _proc, conf = supervisord
    log = tmp_path / "supervisord.log"
    first = _status(conf)

    def recycled_twice() -> bool:
        text = log.read_text()
        assert "FATAL" not in text, text
        # restart = "always": a recycle is an expected exit, restarted by autorestart=true;
        # restart = "on-failure": autorestart=unexpected, so the recycle statuses are left
        # out of exitcodes and the recycle is restarted too.
        return (
            text.count("exited: recycler (exit status 80; expected)") >= 2
            and text.count("exited: recycler2 (exit status 80; not expected)") >= 2
        )

    wait_for(recycled_twice, timeout=GLOBAL_TIMEOUT * 2, message=lambda: f"two recycles each in\n{log.read_text()}")
    for name in ("shop:recycler", "shop:recycler2"):
        wait_for(lambda name=name: _status(conf)[name][0] == "RUNNING", message=f"{name} RUNNING again")
        assert _status(conf)[name][1] != first[name][1]
    assert "FATAL" not in log.read_text()
    # the other programs were not disturbed
    assert _status(conf)["shop:sleeper"] == first["shop:sleeper"]
