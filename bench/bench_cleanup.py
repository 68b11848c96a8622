"""Cleanup of legacy workers: ``procguard cleanup --match`` against what ``pkill -f`` would hit.

Run: ``python -m bench.bench_cleanup [--workers 30] [--grace 1] [--no-write]``.

The scene, rebuilt identically for each contender:

- 30 legacy workers (not started by procguard) x 3 processes: the worker,
  a forked ``multiprocessing`` child (same command line) and an exec'd
  helper (a different command line, as ffmpeg or a shell-out would have).
  Workers finish their in-flight work for 0.1-0.3 s after SIGTERM.
- Decoys whose command lines contain the same words: 5 workers of the new
  stack managed by procguard (they carry the instance marker), 5 processes
  of another user (when run as root), and the calling shell itself, whose
  command line holds the pattern.

Contenders:

- *oracle* (the baseline): SIGTERM sent by this script to exactly the 90
  PIDs it started, then wait -- the floor for "graceful stop of 90
  processes", measured in the same run.
- ``procguard cleanup --match PATTERN --grace 1``, run from a shell whose
  command line contains PATTERN; time from launching the command to zero
  survivors, and collateral (decoys signalled or gone).
- ``pkill -f PATTERN``: never run. Its match set is computed against the
  same process table (full command lines, every user, sparing only
  itself), to show what it would have killed and what it would have missed.

Goal: <= 2 s to zero survivors with grace 1 s, 0 collateral. Writes its
figures into docs/benchmarks.md between ``<!-- bench:cleanup -->`` markers.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from procguard.instances.cleanup import pkill_match_set, snapshot_processes
from procguard.instances.marker import new_marker
from procguard.instances.spawn import spawn_process
from procguard.instances.statedir import namespace_of

from ._report import machine, write_section

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

#: A legacy worker: one forked multiprocessing child, one exec'd helper, a
#: SIGTERM handler that finishes the in-flight item (0.1-0.3 s) before exiting.
WORKER = r"""
import multiprocessing, os, random, signal, subprocess, sys, time
stopping = False
def on_term(signum, frame):
    global stopping
    stopping = True
def child():
    signal.signal(signal.SIGTERM, signal.SIG_DFL)   # the worker's handler is inherited by fork
    time.sleep(3600)
if __name__ == "__main__":
    ready = sys.argv[1]
    signal.signal(signal.SIGTERM, on_term)
    ctx = multiprocessing.get_context("fork")
    kid = ctx.Process(target=child, daemon=True)
    kid.start()
    helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    with open(ready + ".tmp", "w") as f:
        f.write(f"{os.getpid()} {kid.pid} {helper.pid}")
    os.rename(ready + ".tmp", ready)
    while not stopping:
        time.sleep(0.05)
    time.sleep(random.uniform(0.1, 0.3))   # finish the in-flight item
    sys.exit(0)
"""


def alive(pid: int, create_time: float) -> bool:
    try:
        p = psutil.Process(pid)
        return abs(p.create_time() - create_time) < 0.01 and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@dataclass
class Scene:
    token: str
    pattern: re.Pattern[str]
    legacy: dict[int, float] = field(default_factory=dict)  # pid -> create_time
    decoys: dict[int, tuple[float, str]] = field(default_factory=dict)  # pid -> (create_time, kind)
    popens: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def words(self) -> list[str]:
        return ["legacy_worker", "--queue", f"jobs-{self.token}"]


def build_scene(workers: int, tmp: Path, *, with_decoys: bool) -> Scene:
    token = uuid.uuid4().hex[:8]
    scene = Scene(token, re.compile(rf"legacy_worker --queue jobs-{token}"))
    readies = []
    for i in range(workers):
        ready = tmp / f"w{token}-{i}"
        proc = subprocess.Popen([PYTHON, "-c", WORKER, str(ready), *scene.words()],
                                start_new_session=True, stdin=subprocess.DEVNULL)
        scene.popens.append(proc)
        readies.append(ready)
    if with_decoys:
        marker = new_marker(f"stack{token}", namespace_of())
        for _ in range(5):  # the new stack's workers, managed by procguard
            proc = spawn_process([PYTHON, "-c", "import time; time.sleep(3600)", *scene.words()],
                                 marker=marker, parent_death_signal=None)
            scene.popens.append(proc)
            scene.decoys[proc.pid] = (psutil.Process(proc.pid).create_time(), "procguard-managed workers")
        if os.geteuid() == 0:
            for _ in range(5):  # another user's processes
                proc = subprocess.Popen(["sh", "-c", f"sleep 3600; : {' '.join(scene.words())}"], user=65534,
                                        start_new_session=True)
                scene.popens.append(proc)
                scene.decoys[proc.pid] = (psutil.Process(proc.pid).create_time(), "other-user processes")
    deadline = time.monotonic() + 120
    for ready in readies:
        while not ready.exists():
            if time.monotonic() > deadline:
                raise SystemExit(f"worker did not start: {ready}")
            time.sleep(0.01)
        for pid in map(int, ready.read_text().split()):
            scene.legacy[pid] = psutil.Process(pid).create_time()
    return scene


def survivors(scene: Scene) -> list[int]:
    return [pid for pid, created in scene.legacy.items() if alive(pid, created)]


def wait_zero(scene: Scene, t0: float, timeout: float = 60) -> float:
    while survivors(scene):
        if time.monotonic() - t0 > timeout:
            break
        time.sleep(0.005)
    return time.monotonic() - t0


def teardown(scene: Scene) -> None:
    """Stop everything the scene started (by PID, never by name)."""
    procs: list[psutil.Process] = []
    for pid, created in [*scene.legacy.items(), *((p, c) for p, (c, _) in scene.decoys.items())]:
        if alive(pid, created):
            try:
                root = psutil.Process(pid)
                procs += [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                pass
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=10)
    for popen in scene.popens:
        try:
            popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()


def run_oracle(workers: int, tmp: Path) -> float:
    scene = build_scene(workers, tmp, with_decoys=False)
    try:
        t0 = time.monotonic()
        for pid, created in scene.legacy.items():
            if alive(pid, created):
                os.kill(pid, signal.SIGTERM)
        return wait_zero(scene, t0)
    finally:
        teardown(scene)


@dataclass
class Result:
    zero_s: float
    command_s: float
    shell_survived: bool
    stopped: int
    left: int
    collateral: int
    spared: int
    legacy: int
    decoys: dict[str, int]
    pkill_hits: int
    pkill_legacy: int
    pkill_missed: int
    pkill_collateral: int
    pkill_collateral_kinds: dict[str, int]


def run_procguard(workers: int, grace: float, tmp: Path) -> Result:
    scene = build_scene(workers, tmp, with_decoys=True)
    try:
        table = snapshot_processes()
        would_pids = {r.pid for r in pkill_match_set(table, scene.pattern)}
        report_file = tmp / f"report-{scene.token}.json"
        # The calling shell's command line contains the pattern, as it would when typed.
        script = (f"{PYTHON} -m procguard cleanup --match '{scene.pattern.pattern}' --grace {grace} "
                  f"--json --state-dir {tmp / 'state'} > {report_file}")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
                   PROCGUARD_LOG_LEVEL="WARNING")
        t0 = time.monotonic()
        shell = subprocess.Popen(["bash", "-c", script], env=env)
        shell_status = shell.wait(timeout=120)
        command_s = time.monotonic() - t0
        zero_s = wait_zero(scene, t0)
        report = json.loads(report_file.read_text())
        kinds = [kind for _created, kind in scene.decoys.values()]
        return Result(
            zero_s=zero_s,
            command_s=command_s,
            shell_survived=shell_status == 0,
            stopped=len(report["processes"]),
            left=len(survivors(scene)),
            collateral=sum(1 for pid, (created, _) in scene.decoys.items() if not alive(pid, created)),
            spared=len(report["spared"]),
            legacy=len(scene.legacy),
            decoys={kind: kinds.count(kind) for kind in sorted(set(kinds))},
            pkill_hits=len(would_pids),
            pkill_legacy=len(would_pids & set(scene.legacy)),
            pkill_missed=len(set(scene.legacy) - would_pids),
            pkill_collateral=len(would_pids - set(scene.legacy)),
            pkill_collateral_kinds=_count(scene.decoys[p][1] for p in would_pids if p in scene.decoys),
        )
    finally:
        teardown(scene)


def _count(items: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return dict(sorted(counts.items()))


def render(r: Result, oracle_s: float, workers: int, grace: float) -> str:
    ratio = r.zero_s / oracle_s if oracle_s else float("nan")
    decoy_text = ", ".join(f"{n} {kind}" for kind, n in r.decoys.items()) + ", the calling shell"
    met = r.zero_s <= 2.0 and r.collateral == 0 and r.left == 0 and r.shell_survived
    lines = [
        "## Cleanup of legacy workers (`bench/bench_cleanup.py`)",
        "",
        f"{workers} legacy workers x 3 processes (worker, forked multiprocessing child, exec'd helper with "
        f"another command line), each finishing its in-flight item for 0.1-0.3 s after SIGTERM; decoys whose "
        f"command lines contain the same words: {decoy_text}. Grace {grace:g} s. Machine: {machine()}.",
        "",
        "| contender | processes hit | legacy stopped | legacy left running | collateral | time to zero survivors |",
        "|---|---|---|---|---|---|",
        f"| oracle: SIGTERM to exactly the {r.legacy} known PIDs (baseline) | {r.legacy} | {r.legacy} | 0 | 0 | "
        f"{oracle_s:.2f} s (1.00x) |",
        f"| `procguard cleanup --match PATTERN --grace {grace:g}` | {r.stopped} | {r.legacy - r.left} | {r.left} | "
        f"{r.collateral} | {r.zero_s:.2f} s ({ratio:.2f}x; the command returns after {r.command_s:.2f} s) |",
        f"| `pkill -f PATTERN` (match set computed, never run) | {r.pkill_hits} + its shell | {r.pkill_legacy} | "
        f"{r.pkill_missed} (orphaned helpers) | {r.pkill_collateral} + the calling shell | n/a |",
        "",
        f"procguard reported {r.spared} matching processes it deliberately spared (itself and its ancestors, "
        f"other users' and procguard-managed processes); the calling shell "
        f"{'survived' if r.shell_survived else 'DID NOT survive'}. `pkill -f` would have signalled "
        f"{', '.join(f'{n} {k}' for k, n in r.pkill_collateral_kinds.items()) or 'no'} decoys and its own shell, "
        f"and left the "
        f"{r.pkill_missed} helpers (command lines without the pattern) running as orphans. "
        f"Goal (<= 2 s to zero survivors, 0 collateral): {'met' if met else 'NOT met'}.",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--workers", type=int, default=30)
    parser.add_argument("--grace", type=float, default=1.0)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-cleanup-") as tmpdir:
        tmp = Path(tmpdir)
        oracle_s = run_oracle(args.workers, tmp)
        result = run_procguard(args.workers, args.grace, tmp)
    text = render(result, oracle_s, args.workers, args.grace)
    print(text)
    if not args.no_write:
        write_section("cleanup", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
