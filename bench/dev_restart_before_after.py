"""The seed's "before/after": a dev stack restarted 10 times, without and with procguard.

Run: ``python -m bench.dev_restart_before_after [--restarts 10] [--no-write]``.

The dev script starts 3 workers; each holds ~25 MB and has a forked
``multiprocessing`` child holding ~15 MB.

- *Before*: the script backgrounds its workers (``nohup python worker.py &``)
  and a restart only re-runs the script: the old workers keep running.
  After 10 restarts: 30 duplicate workers with their children, memory piling up.
- *After*: the script starts each worker as
  ``procguard run --name NAME --replace -- python worker.py``: the single-
  instance lock refuses duplicates and ``--replace`` stops the running
  instance (gracefully, its whole tree) before taking over.

A sampler thread watches the process table every 20 ms during the whole run
and records the most workers ever alive at once. Process counts and memory
(RSS) are printed after each restart; procguard's own processes (the
runners and their watchdogs) are counted separately, so the overhead is
visible. Everything started is stopped at the end (``procguard cleanup
NAME`` for the "after" stack, by PID for the "before" one). Writes its
figures into docs/benchmarks.md between ``<!-- bench:dev_restart -->`` markers.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from .bench_cleanup import machine, write_section

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
WORKERS = 3
MB = 1024 * 1024

#: A dev worker: 25 MB of its own, one forked child with 15 MB, a ready file.
WORKER = r"""
import multiprocessing, os, sys, time
def child():
    data = bytearray(15 * 1024 * 1024)
    time.sleep(3600)
if __name__ == "__main__":
    ready = sys.argv[1]
    data = bytearray(25 * 1024 * 1024)
    kid = multiprocessing.get_context("fork").Process(target=child, daemon=True)
    kid.start()
    with open(ready + ".tmp", "w") as f:
        f.write(f"{os.getpid()} {kid.pid}")
    os.rename(ready + ".tmp", ready)
    time.sleep(3600)
"""


@dataclass
class Census:
    workers: int = 0
    children: int = 0
    procguard: int = 0
    worker_rss: int = 0
    procguard_rss: int = 0

    @property
    def processes(self) -> int:
        return self.workers + self.children + self.procguard


def census(token: str, *, pss: bool = False) -> Census:
    """Count this run's processes by role (the token is in every command line we started).

    With ``pss`` memory is the proportional set size: pages a forked child
    shares with its parent are split between them, not counted twice as RSS would.
    """
    rows: dict[int, tuple[int, list[str], int]] = {}
    for proc in psutil.process_iter(["pid", "ppid", "cmdline", "memory_info"]):
        cmd = proc.info["cmdline"] or []
        if any(token in part for part in cmd) and proc.info["memory_info"] is not None:
            size = proc.info["memory_info"].rss
            if pss:
                try:
                    size = proc.memory_full_info().pss
                except (psutil.Error, AttributeError):
                    pass
            rows[proc.info["pid"]] = (proc.info["ppid"], cmd, size)
    c = Census()
    for ppid, cmd, rss in rows.values():
        if "procguard" in cmd or "procguard-watchdog" in cmd:  # runners (-m procguard), their watchdogs
            c.procguard += 1
            c.procguard_rss += rss
        elif ppid in rows and rows[ppid][1] == cmd:
            c.children += 1
            c.worker_rss += rss
        else:
            c.workers += 1
            c.worker_rss += rss
    return c


@dataclass
class Sampler:
    """Max workers seen at once, sampled every 20 ms in a thread."""

    token: str
    max_workers: int = 0
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Sampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.max_workers = max(self.max_workers, census(self.token).workers)
            self.samples += 1

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def wait_ready(paths: list[Path], timeout: float = 120) -> list[int]:
    deadline = time.monotonic() + timeout
    pids: list[int] = []
    for path in paths:
        while not path.exists():
            if time.monotonic() > deadline:
                raise SystemExit(f"worker did not start: {path}")
            time.sleep(0.01)
        pids += [int(x) for x in path.read_text().split()]
    return pids


def env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
                PROCGUARD_LOG_LEVEL="WARNING")


def before(restarts: int, tmp: Path) -> tuple[list[Census], int, list[int]]:
    token = f"devb{uuid.uuid4().hex[:8]}"
    started: list[int] = []
    history = []
    with Sampler(token) as sampler:
        for r in range(restarts):
            readies = []
            for i in range(WORKERS):
                ready = tmp / f"{token}-{r}-{i}"
                proc = subprocess.Popen([PYTHON, "-c", WORKER, str(ready), token, f"worker{i}"],
                                        start_new_session=True, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                started.append(proc.pid)
                readies.append(ready)
            started += wait_ready(readies)
            history.append(census(token, pss=True))
    return history, sampler.max_workers, started


def after(restarts: int, tmp: Path) -> tuple[list[Census], int, list[str], list[int]]:
    token = f"deva{uuid.uuid4().hex[:8]}"
    state = tmp / "state"
    names = [f"{token}-worker{i}" for i in range(WORKERS)]
    history = []
    started: list[int] = []
    with Sampler(token) as sampler:
        for r in range(restarts):
            readies = []
            for i, name in enumerate(names):
                ready = tmp / f"{token}-{r}-{i}"
                argv = [PYTHON, "-m", "procguard", "run", "--name", name, "--replace", "--health-port", "0",
                        "--grace", "5", "--state-dir", str(state), "--", PYTHON, "-c", WORKER, str(ready), token]
                proc = subprocess.Popen(argv, env=env(), start_new_session=True, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                started.append(proc.pid)
                readies.append(ready)
            started += wait_ready(readies)
            history.append(census(token, pss=True))
    return history, sampler.max_workers, names, started


def stop_pids(pids: list[int]) -> None:
    """Stop what this bench started, by PID (and the trees under those PIDs)."""
    procs: list[psutil.Process] = []
    for pid in pids:
        try:
            root = psutil.Process(pid)
            procs += [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _gone, alive = psutil.wait_procs(procs, timeout=5)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)


def render(b: list[Census], b_max: int, a: list[Census], a_max: int, restarts: int) -> str:
    lines = [
        "## Dev stack restarted 10 times, before/after (`bench/dev_restart_before_after.py`)",
        "",
        f"A dev script starting {WORKERS} workers (each ~25 MB plus a forked multiprocessing child with ~15 MB), "
        f"restarted {restarts} times. Before: workers backgrounded, old ones left running. After: each worker "
        f"started as `procguard run --name NAME --replace -- ...` (3 runners and 3 watchdogs of its own). Memory is PSS "
        f"(shared pages split between the processes sharing them). Machine: {machine()}.",
        "",
        "| after restart | before: workers | before: processes | before: memory | after: workers | "
        "after: processes (incl. procguard's) | after: worker memory | after: procguard's own memory |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, (x, y) in enumerate(zip(b, a, strict=True), 1):
        lines.append(
            f"| {i} | {x.workers} | {x.processes} | {x.worker_rss / MB:.0f} MB | {y.workers} | {y.processes} | "
            f"{y.worker_rss / MB:.0f} MB | {y.procguard_rss / MB:.0f} MB |"
        )
    last_b, last_a = b[-1], a[-1]
    total_a = last_a.worker_rss + last_a.procguard_rss
    lines += [
        "",
        f"Most workers alive at once (sampled every 20 ms during all restarts): before {b_max}, after {a_max}. "
        f"After {restarts} restarts: {last_b.processes} vs {last_a.processes} processes "
        f"({last_b.processes / max(1, last_a.processes):.1f}x), {last_b.worker_rss / MB:.0f} MB vs "
        f"{total_a / MB:.0f} MB including procguard's runners and watchdogs "
        f"({last_b.worker_rss / max(1, total_a):.1f}x).",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--restarts", type=int, default=10)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-devrestart-") as tmpdir:
        tmp = Path(tmpdir)
        b_started: list[int] = []
        a_started: list[int] = []
        names: list[str] = []
        try:
            b_hist, b_max, b_started = before(args.restarts, tmp)
            stop_pids(b_started)
            a_hist, a_max, names, a_started = after(args.restarts, tmp)
            for name in names:
                subprocess.run([PYTHON, "-m", "procguard", "cleanup", name, "--grace", "5",
                                "--state-dir", str(tmp / "state")],
                               env=env(), check=False, capture_output=True, timeout=120)
        finally:
            stop_pids(b_started + a_started)  # whatever is left (nothing, normally)
    text = render(b_hist, b_max, a_hist, a_max, args.restarts)
    print(text)
    if not args.no_write:
        write_section("dev_restart", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
