"""Rows 5 and 6: the attack of :mod:`.hostile_http` on a real worker's health port and a real status page.

Row 5 runs ``procguard run --health-port P -- sleep`` (the runner answers
/health from a thread of its own: it runs no user code); row 6 runs ``procguard up -d --status-port P``
(the supervisor's status page answers /api/workers). A crash is the serving
process gone or replaced (a responder its worker had to restart had died),
or a traceback (or a restarted responder) in the log of the process that serves.
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
from tests.helpers import free_port, python_env, wait_for

from . import hostile_http
from .harness import PROCGUARD, ROOT, RowResult, Tally, alive, cli, family_of, kill_all, stop


@dataclass(frozen=True)
class Load:
    """How hard the attack is."""

    requests: int
    idle: int
    slow: int
    slow_s: float

    def tried(self, probes: int) -> str:
        return (f"{self.requests:,} hostile requests, {self.slow} slowloris connections for {self.slow_s:g} s, "
                f"{self.idle:,} idle connections; {probes:,} probes")


def _crashes(serving: psutil.Process, log: Path) -> list[str]:
    text = log.read_text(errors="replace") if log.exists() else ""
    problems = []
    if not alive(serving):
        problems.append(f"the serving process (pid {serving.pid}) is gone")
    if "Traceback" in text:
        problems.append(f"a traceback in {log.name}: {text[text.index('Traceback'):][:300]!r}")
    if re.search(r"responder .*(exited|keeps exiting)", text):
        problems.append(f"the health responder had to be restarted: {log.name}")
    return problems


def _responder(runner: int) -> psutil.Process | None:
    for proc in family_of(runner)[1:]:
        try:
            if proc.cmdline()[1:3] == ["-I", "-c"]:
                return proc
        except psutil.Error:
            pass
    return None


def _count(number: int, title: str, load: Load, result: hostile_http.Attack, crashes: list[str],
           started: float) -> RowResult:
    tally = Tally()
    result.count_into(tally)
    tally.record(crashes)  # the server's own survival is one more try
    measured = (f"{len(crashes)} crashes; {result.foreign_served} foreign Host headers answered with data; "
                + hostile_http.figures(result))
    return RowResult(number, title, load.tried(len(result.probes) + len(result.probes_failed)), tally.failed,
                     measured, time.monotonic() - started, tally.problems)


def run_health(load: Load, work: Path) -> RowResult:
    started = time.monotonic()
    port = free_port()
    log = work / "runner.log"
    env = python_env(PROCGUARD_STATE_DIR=str(work / "state"), PROCGUARD_LOG_LEVEL="INFO")
    with open(log, "wb") as out:
        runner = subprocess.Popen([*PROCGUARD, "run", "--name", "hostile-http", "--health-port", str(port), "--",
                                   "sleep", "3600"], env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: hostile_http.probe(port, "/health")[0] == 200 or runner.poll() is not None, timeout=60,
                 message="the worker's /health")
        # a command's runner serves from a thread of its own; a function worker hands the port to a responder
        serving = _responder(runner.pid) or psutil.Process(runner.pid)
        result = hostile_http.attack(port, "/health", requests=load.requests, idle=load.idle, slow=load.slow,
                                     slow_s=load.slow_s, host_guard=False, alive=lambda: alive(serving))
        crashes = _crashes(serving, log)
        if runner.poll() is not None:
            crashes.append(f"the worker's runner exited {runner.returncode}")
        return _count(5, TITLE_HEALTH, load, result, crashes, started)
    finally:
        stop(runner)


STACK = """\
[project]
name = "hostilehttp"

[defaults]
grace = "2s"

[workers.idle]
command = ["sleep", "3600"]
"""


def run_status_page(load: Load, work: Path) -> RowResult:
    started = time.monotonic()
    port = free_port()
    state = work / "state"
    config = work / "procguard.toml"
    config.write_text(STACK)
    env = python_env(PROCGUARD_STATE_DIR=str(state), PROCGUARD_LOG_LEVEL="INFO")
    up = cli("up", "-d", "-c", str(config), "--status-port", str(port), env=env)
    found = re.search(r"supervisor PID (\d+)", up.stdout)
    if up.returncode != 0 or not found:
        return RowResult(6, TITLE_STATUS, "nothing", 1, "the stack did not start", time.monotonic() - started,
                         [f"up -d exited {up.returncode}: {up.stdout} {up.stderr[-300:]}"])
    supervisor = psutil.Process(int(found.group(1)))
    try:
        wait_for(lambda: hostile_http.probe(port, "/api/workers")[0] == 200 or not alive(supervisor), timeout=60,
                 message="the status page's /api/workers")
        result = hostile_http.attack(port, "/api/workers", requests=load.requests, idle=load.idle, slow=load.slow,
                                     slow_s=load.slow_s, host_guard=True, alive=lambda: alive(supervisor))
        crashes = _crashes(supervisor, state / "logs" / "hostilehttp" / "supervisor.log")
        return _count(6, TITLE_STATUS, load, result, crashes, started)
    finally:
        cli("down", "-c", str(config), env=env)
        psutil.wait_procs([supervisor], timeout=30)
        kill_all(family_of(supervisor.pid))


TITLE_HEALTH = ("hostile HTTP to a worker's health port (`procguard run --health-port -- CMD`): every method, bad Host headers, huge paths, oversized heads, garbage bytes, slowloris, "
                "idle connections; /health probed every 50 ms")
TITLE_STATUS = ("the same against the status page (`procguard up --status-port`); /api/workers probed every 50 ms, "
                "a foreign Host must not be answered with data")
