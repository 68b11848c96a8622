"""Row 7: hostile state-directory contents; ``procguard up -d`` must start the stack every time.

Every kind of damage tests/hostile_state.py builds (a history.sqlite that is
garbage, truncated, foreign, a directory; symlinked and hard-linked logs,
supervisor.log, history and lock files; FIFOs; the control socket path
occupied, ``instances/`` a symlink, a file or writable by others...), plus
one planted here (the socket path held by a live socket of another
program), each ``repeats`` times, in a fresh state
directory. The stack has a plain command (``ticker``) and a ``run =`` worker
(which takes an instance lock in the state directory).

A try fails when ``up -d`` does not start the stack (exit status, no
supervisor), a worker does not reach ``running``, a file planted as a
victim (the target of a link) was changed, a traceback shows in up's output
or supervisor.log, or ``procguard history`` fails afterwards.
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from tests.helpers import python_env, wait_for
from tests.hostile_state import DAMAGE, HOSTILE, Planted, seeded_history

from procguard.supervisor.control import NotRunningError, request, socket_path
from procguard.supervisor.history import db_path

from .harness import PYTHON, RowResult, Tally, cli, family_of, kill_all, one_line

PROJECT = "hostilestate"
STACK = f"""\
[project]
name = "{PROJECT}"

[defaults]
grace = "2s"

[workers.ticker]
command = ["sleep", "3600"]

[workers.fn]
run = "tests.supervisor_workers.targets:idle"
interval = "1h"
"""

#: Listens on a path and never answers: another program's socket where the control socket belongs.
SOCKET_SQUATTER = r"""
import socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1])
s.listen(50)
open(sys.argv[2], "w").write("ready")
held = []
while True:
    conn, _ = s.accept()
    held.append(conn)
"""


@dataclass
class Scene:
    """What a kind planted: victims and warnings (tests/hostile_state.py), and any process it started."""

    planted: Planted = field(default_factory=Planted)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)


Plant = Callable[[Path, Path, Scene], None]


def _damaged_history(damage: Callable[[Path], None]) -> Plant:
    def plant(state: Path, tmp: Path, scene: Scene) -> None:
        path = db_path(state)
        seeded_history(path, project=PROJECT)
        damage(path)

    return plant


def _hostile(case: Callable[[Path, Path, Planted, str], None]) -> Plant:
    def plant(state: Path, tmp: Path, scene: Scene) -> None:
        case(state, tmp, scene.planted, PROJECT)

    return plant


def _socket_squatter(state: Path, tmp: Path, scene: Scene) -> None:
    ready = tmp / "squatter.ready"
    proc = subprocess.Popen([PYTHON, "-c", SOCKET_SQUATTER, str(socket_path(state, PROJECT)), str(ready)])
    scene.processes.append(proc)
    wait_for(lambda: ready.exists() or proc.poll() is not None, message="the socket squatter")


def kinds() -> dict[str, Plant]:
    found: dict[str, Plant] = {
        f"history {name.replace('_', ' ')}": _damaged_history(how) for name, (how, _, _) in DAMAGE.items()
    }
    found.update({name.replace("_", " "): _hostile(case) for name, case in HOSTILE.items()})
    found["socket path held by another program"] = _socket_squatter
    return found


def _workers(state: Path) -> dict[str, str] | None:
    try:
        reply = request(socket_path(state, PROJECT), {"cmd": "status"}, project=PROJECT, timeout=10)
    except (NotRunningError, OSError):
        return None
    return {w["name"]: w["state"] for w in reply["workers"]}


def start_try(kind: str, plant: Plant, directory: Path, starts: list[float]) -> list[str]:
    """Plant ``kind`` in a fresh state directory, ``up -d``, check, ``down``."""
    state, tmp = directory / "state", directory / "tmp"
    state.mkdir(parents=True, mode=0o700)
    tmp.mkdir()
    config = directory / "procguard.toml"
    config.write_text(STACK)
    env = python_env(PROCGUARD_STATE_DIR=str(state), PROCGUARD_LOG_LEVEL="INFO")
    scene = Scene()
    supervisor: psutil.Process | None = None
    try:
        plant(state, tmp, scene)
        started = time.monotonic()
        up = cli("up", "-d", "-c", str(config), env=env)
        found = re.search(r"started \(supervisor PID (\d+)\)", up.stdout)
        if up.returncode != 0 or not found:
            return [f"{kind}: start refused, exit {up.returncode}: {one_line(up.stdout + up.stderr)}"]
        supervisor = psutil.Process(int(found.group(1)))
        wait_for(lambda: (_workers(state) or {}) == {"ticker": "running", "fn": "running"}, timeout=60,
                 message=lambda: f"{kind}: both workers running ({_workers(state)})")
        starts.append(time.monotonic() - started)
        problems = []
        changed = scene.planted.untouched()
        if changed:
            problems.append(f"{kind}: written through a link: {changed}")
        log = state / "logs" / PROJECT / "supervisor.log"
        text = up.stderr + (log.read_text(errors="replace") if log.is_file() and not log.is_symlink() else "")
        if "Traceback" in text:
            problems.append(f"{kind}: a traceback: {text[text.index('Traceback'):][:300]!r}")
        history = cli("history", "--json", "-n", "5", "-c", str(config), env=env)
        if history.returncode != 0 or history.stderr:
            problems.append(f"{kind}: history exited {history.returncode}: {one_line(history.stderr)}")
        else:
            json.loads(history.stdout)
        return problems
    finally:
        cli("down", "-c", str(config), env=env)
        if supervisor is not None:
            psutil.wait_procs([supervisor], timeout=30)
            kill_all(family_of(supervisor.pid))
        for proc in scene.processes:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)


def run_hostile_state(repeats: int, work: Path) -> RowResult:
    started = time.monotonic()
    tally = Tally()
    starts: list[float] = []
    every = kinds()
    refused: dict[str, int] = {}
    for repeat in range(repeats):
        for index, (kind, plant) in enumerate(every.items()):
            directory = work / f"{repeat}-{index}"
            problems = tally.attempt(lambda kind=kind, plant=plant, directory=directory: start_try(
                kind, plant, directory, starts))
            if problems:
                refused[kind] = refused.get(kind, 0) + 1
    figures = (f"{sum(refused.values())} failed starts"
               + (f" ({', '.join(f'{kind}: {n}' for kind, n in refused.items())})" if refused else "")
               + f"; the stack running {statistics.median(starts) if starts else float('nan'):.1f} s after `up -d` "
               f"(median)")
    return RowResult(7, f"hostile state-directory contents, {len(every)} kinds ({', '.join(every)}), "
                     "then `procguard up -d` of a command and a `run =` worker", f"{tally.tried} starts", tally.failed,
                     figures, time.monotonic() - started, tally.problems)

