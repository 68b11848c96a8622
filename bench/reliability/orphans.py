"""Rows 1 and 2: SIGKILL of ``procguard run`` and of ``procguard up -d``; survivors after a deadline.

Each round starts real workers that each leave a family (see
:mod:`.family`), records every process of the tree at that moment (the
workers, their families, procguard's own helpers) plus the escaped
grandchildren, sends SIGKILL to the runner or supervisor, and counts what
still runs ``deadline`` seconds later. A round with any survivor fails;
survivors are then killed by PID so the next round starts clean.
"""

from __future__ import annotations

import json
import re
import signal
import statistics
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from tests.helpers import free_port, python_env, wait_for_file

from .family import OUT_ENV
from .harness import PROCGUARD, PYTHON, ROOT, RowResult, Tally, family_of, kill_all, processes, wait_gone

FAMILY = str(Path(__file__).with_name("family.py"))
FUNCTION_TARGET = "bench.reliability.family:spawn_family"
#: Survivors are counted this long after the SIGKILL.
DEADLINE_S = 5.0


@dataclass
class Kills:
    """What the rounds of one row saw: processes watched, survivors by kind, time until none ran."""

    watched: int = 0
    survivors: Counter[str] = field(default_factory=Counter)
    gone_after: list[float] = field(default_factory=list)

    def figures(self, deadline: float) -> str:
        total = sum(self.survivors.values())
        text = f"{total} survivors of {self.watched} processes {deadline:g} s after the kill"
        if total:
            text += " (" + ", ".join(f"{n} {kind}" for kind, n in self.survivors.most_common()) + ")"
        if self.gone_after:
            text += (f"; in the rounds without survivors all were gone {statistics.median(self.gone_after):.2f} s "
                     f"after the kill (median), {max(self.gone_after):.2f} s at most")
        return text


def _family(path: Path, owner: str, proc: subprocess.Popen[bytes] | None = None) -> dict[int, str]:
    """``{pid: what it is}`` of a family (family.py's file), each labelled with ``owner``."""
    return {int(pid): f"{owner} {what}" for pid, what in json.loads(wait_for_file(path, proc=proc, timeout=60))}


def _what(proc: psutil.Process, labels: dict[int, str]) -> str:
    if proc.pid in labels:
        return labels[proc.pid]
    try:
        cmdline = proc.cmdline()
    except psutil.Error:
        return "process"
    joined = " ".join(cmdline)
    if "resource_tracker" in joined:
        return "resource tracker"
    if "procguard-watchdog" in cmdline[3:4]:
        return "watchdog"
    if cmdline[1:3] == ["-I", "-c"]:
        return "health responder"
    return "procguard helper" if "procguard" in joined else "process"


def _count(kills: Kills, tree: list[psutil.Process], labels: dict[int, str], deadline: float) -> list[str]:
    kills.watched += len(tree)
    elapsed, left = wait_gone(tree, deadline)
    if elapsed is not None:
        kills.gone_after.append(elapsed)
        return []
    kinds = Counter(_what(proc, labels) for proc in left)
    kills.survivors.update(kinds)
    kill_all(left)
    return [f"alive {deadline:g} s after the kill: " + ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))]


# -- row 1: procguard run -------------------------------------------------------------

Launch = Callable[[int, Path, dict[str, str]], list[str]]


def procguard_run(index: int, out: Path, env: dict[str, str]) -> list[str]:
    """``procguard run`` with a health port: even rounds a command, odd rounds a function target."""
    argv = [*PROCGUARD, "run", "--name", f"orphans{index}", "--health-port", str(free_port()), "--grace", "1"]
    if index % 2:
        env[OUT_ENV] = str(out)
        return [*argv, FUNCTION_TARGET, "--interval", "1h"]
    return [*argv, "--", PYTHON, FAMILY, str(out), "--spawn"]


def runner_round(index: int, work: Path, kills: Kills, *, launch: Launch = procguard_run,
                 deadline: float = DEADLINE_S) -> list[str]:
    """Start a runner whose worker has a family, SIGKILL the runner, count survivors."""
    out = work / f"family-{index}.json"
    env = python_env(PROCGUARD_STATE_DIR=str(work / "state"), PROCGUARD_LOG_LEVEL="WARNING")
    argv = launch(index, out, env)
    with open(work / f"runner-{index}.log", "wb") as log:
        runner = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        labels = _family(out, "function mode:" if index % 2 else "command mode:", runner)
        tree = {p.pid: p for p in [*family_of(runner.pid), *processes(labels)]}
        tree.pop(runner.pid, None)
        if len(tree) < len(labels) - 1:
            return [f"only {len(tree)} of the family's {len(labels)} processes were found running"]
        runner.send_signal(signal.SIGKILL)
        runner.wait(timeout=30)
        return _count(kills, list(tree.values()), labels, deadline)
    finally:
        if runner.poll() is None:
            kill_all(family_of(runner.pid))
        runner.wait(timeout=30)


def run_runner_kills(rounds: int, work: Path) -> RowResult:
    started = time.monotonic()
    tally, kills = Tally(), Kills()
    for index in range(rounds):
        tally.attempt(lambda index=index: runner_round(index, work, kills))
    return RowResult(
        1, "SIGKILL of `procguard run` (command and function mode, health port on) whose worker has "
        "2 multiprocessing children (fork, one daemon), a spawn-method child with its resource tracker "
        "(command mode) and a double-forked setsid grandchild",
        f"{tally.tried} SIGKILLs", tally.failed, kills.figures(DEADLINE_S), time.monotonic() - started,
        tally.problems)


# -- row 2: procguard up -d -------------------------------------------------------------

STACK = """\
[project]
name = "orphans{index}"

[defaults]
grace = "2s"
max_runtime = 0

[workers.function]
run = "{target}"
interval = "1h"
env = {{ {out_env} = "{function_out}" }}

[workers.health]
command = [{python}, {family}, "{health_out}", "--spawn"]
health_port = {port}

[workers.plain]
command = [{python}, {family}, "{plain_out}", "--spawn"]
"""


def supervisor_round(index: int, work: Path, kills: Kills, *, deadline: float = DEADLINE_S) -> list[str]:
    """``up -d`` a stack of three workers with families, SIGKILL the supervisor, count survivors."""
    outs = {name: work / f"stack-{index}-{name}.json" for name in ("function", "health", "plain")}
    config = work / f"stack-{index}.toml"
    config.write_text(STACK.format(
        index=index, target=FUNCTION_TARGET, out_env=OUT_ENV, python=json.dumps(PYTHON), family=json.dumps(FAMILY),
        port=free_port(), **{f"{name}_out": path for name, path in outs.items()}))
    env = python_env(PROCGUARD_STATE_DIR=str(work / f"state-{index}"), PROCGUARD_LOG_LEVEL="WARNING")
    env.pop(OUT_ENV, None)
    up = subprocess.run([*PROCGUARD, "up", "-d", "-c", str(config)], env=env, cwd=ROOT, capture_output=True,
                        text=True, timeout=120, check=False)
    found = re.search(r"supervisor PID (\d+)", up.stdout)
    if up.returncode != 0 or not found:
        return [f"up -d exited {up.returncode}: {up.stdout.strip()} {up.stderr.strip()[-300:]}"]
    supervisor = psutil.Process(int(found.group(1)))
    try:
        labels = {pid: what for name, path in outs.items() for pid, what in _family(path, f"{name} worker:").items()}
        tree = {p.pid: p for p in [*family_of(supervisor.pid), *processes(labels)]}
        tree.pop(supervisor.pid, None)
        supervisor.send_signal(signal.SIGKILL)
        psutil.wait_procs([supervisor], timeout=30)
        return _count(kills, list(tree.values()), labels, deadline)
    finally:
        kill_all(family_of(supervisor.pid))


def run_supervisor_kills(rounds: int, work: Path) -> RowResult:
    started = time.monotonic()
    tally, kills = Tally(), Kills()
    for index in range(rounds):
        tally.attempt(lambda index=index: supervisor_round(index, work, kills))
    return RowResult(
        2, "SIGKILL of the supervisor (`procguard up -d`) of three workers that each have such a family: "
        "a `run =` function worker, a command with a health port (run through `procguard run`), a plain command",
        f"{tally.tried} SIGKILLs", tally.failed, kills.figures(DEADLINE_S), time.monotonic() - started,
        tally.problems)

