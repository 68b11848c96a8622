"""``procguard run -- COMMAND``: how fast it catches a leak from outside, and what it costs.

Run: ``python -m bench.bench_runner [--runs N] [--no-write]``.

1. Memory guard from outside. A plain Python program (no procguard inside)
   fills itself to 170 MB, waits a random fraction of a second (so the leak's
   phase against the checker differs between runs), then leaks 20 MB/s: the
   scenario the peers are compared on (head to head, section 3). It logs ``time rss`` every
   20 ms and the time it received SIGTERM (then exits 0). Two checkers watch it
   against a 200 MB limit, in the same run:

   - ``procguard run --memory-limit 200MB -- python ...`` (defaults: sample
     every 0.25 s, 3 strikes, SIGTERM, grace);
   - the baseline: an outside poller that reads the tree's RSS every 5 s and
     sends SIGTERM when it is over the limit, which is what supervisord +
     memmon on TICK_5 does (the best peer configuration measured).

   Reported: time from first crossing to SIGTERM, and peak RSS; ratio to the
   baseline.

2. Footprint. The overhead of ``procguard run -- sleep 60``: RSS of every
   process of its tree that is not the command (the runner and its /bin/sh
   watchdog), without and with a health port, next to a bare ``sleep`` and a
   bare idle ``python`` measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from ._report import write_section

MB = 1024 * 1024
LIMIT_MB = 200
PREFILL_MB = 170
RATE_MB_S = 20
BASELINE_POLL_S = 5.0
REPO = Path(__file__).resolve().parent.parent
SECTION = "runner"


def child(out: str, seed: int) -> int:
    """The leaking program (its own process). Logs ``t rss_bytes`` lines, and ``term t`` on SIGTERM."""
    page = os.sysconf("SC_PAGE_SIZE")
    log = open(out, "w", buffering=1)  # noqa: SIM115 - open for the life of the process
    stop: list[float] = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(time.monotonic()))

    def rss() -> int:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * page

    hold = [b"x" * (10 * MB) for _ in range(PREFILL_MB // 10 - 2)]  # + the interpreter ~ 170 MB
    time.sleep(random.Random(seed).uniform(0.0, 1.0))
    step_s = 0.02
    chunk = int(RATE_MB_S * MB * step_s)
    while not stop:
        hold.append(b"x" * chunk)
        log.write(f"{time.monotonic():.4f} {rss()}\n")
        time.sleep(step_s)
    log.write(f"term {stop[0]:.4f}\n")
    return 0


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO), env.get("PYTHONPATH", "")])
    return env


def _read(out: Path) -> tuple[float, float, float]:
    """(crossing time, SIGTERM time, peak RSS MB) from a child's log."""
    crossing = term = float("nan")
    peak = 0
    for line in out.read_text().splitlines():
        if line.startswith("term "):
            term = float(line.split()[1])
            continue
        t, rss = line.split()
        peak = max(peak, int(rss))
        if int(rss) > LIMIT_MB * MB and crossing != crossing:  # first crossing (nan check)
            crossing = float(t)
    return crossing, term, peak / MB


def _child_argv(out: Path, seed: int) -> list[str]:
    return [sys.executable, "-m", "bench.bench_runner", "--child", str(out), "--seed", str(seed)]


def run_procguard(tmp: Path, seed: int) -> tuple[float, float]:
    out = tmp / f"pg-{seed}.log"
    state = tmp / "state"
    proc = subprocess.Popen(
        [sys.executable, "-m", "procguard", "run", "--state-dir", str(state), "--name", f"bench-{seed}",
         "--health-port", "0", "--memory-limit", f"{LIMIT_MB}MB", "--grace", "5s", "--",
         *_child_argv(out, seed)],
        env=_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    status = proc.wait(timeout=120)
    if status != 82:
        msg = f"procguard run exited {status}, expected 82 (memory_limit)"
        raise RuntimeError(msg)
    crossing, term, peak = _read(out)
    return term - crossing, peak


def run_baseline(tmp: Path, seed: int) -> tuple[float, float]:
    out = tmp / f"base-{seed}.log"
    proc = subprocess.Popen(_child_argv(out, seed), env=_env(), cwd=REPO)
    try:
        root = psutil.Process(proc.pid)
        next_check = time.monotonic() + random.Random(seed).uniform(0, BASELINE_POLL_S)
        while proc.poll() is None:
            time.sleep(max(0.0, next_check - time.monotonic()))
            next_check += BASELINE_POLL_S
            try:
                tree = [root, *root.children(recursive=True)]
                rss = sum(p.memory_info().rss for p in tree)
            except psutil.Error:
                break
            if rss > LIMIT_MB * MB:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    crossing, term, peak = _read(out)
    return term - crossing, peak


def _tree(pid: int, exclude: set[int]) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [p for p in [root, *root.children(recursive=True)] if p.pid not in exclude]


def _role(proc: psutil.Process, runner_pid: int) -> str:
    if proc.pid == runner_pid:
        return "runner"
    cmdline = proc.cmdline()
    return "watchdog" if "procguard-watchdog" in cmdline[3:4] else (
        "health responder" if "responder" in " ".join(cmdline) else proc.name())


FOOTPRINT_WINDOW_S = 10.0
#: What a standalone runner may add beside its command (no health port), MB of RSS.
GOAL_MB = 15.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def footprint(tmp: Path, *, health_port: bool) -> tuple[dict[str, float], float, float]:
    """({role: RSS MB} of every process of a ``procguard run -- sleep 60`` that is not the command,
    their CPU %, the command's own RSS MB)."""
    port = str(_free_port()) if health_port else "0"
    runner = subprocess.Popen(
        [sys.executable, "-m", "procguard", "run", "--state-dir", str(tmp / "state"), "--name", "bench-idle",
         "--health-port", port, "--", "sleep", "60"],
        env=_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        sleeper: list[psutil.Process] = []
        while time.monotonic() < deadline and not sleeper:
            sleeper = [c for c in psutil.Process(runner.pid).children() if c.name() == "sleep"]
            time.sleep(0.05)
        if not sleeper:
            msg = "the runner never started its command"
            raise RuntimeError(msg)
        time.sleep(2.0)  # let start-up allocations settle
        tree = _tree(runner.pid, {c.pid for c in sleeper})
        cpu_before = sum(_cpu_ns(p.pid) for p in tree)
        time.sleep(FOOTPRINT_WINDOW_S)
        cpu_pct = (sum(_cpu_ns(p.pid) for p in tree) - cpu_before) / 1e9 / FOOTPRINT_WINDOW_S * 100
        roles = {_role(p, runner.pid): p.memory_info().rss / MB for p in tree}
        command_mb = sleeper[0].memory_info().rss / MB
    finally:
        runner.send_signal(signal.SIGTERM)
        runner.wait(timeout=30)
    return roles, cpu_pct, command_mb


def function_footprint(tmp: Path) -> dict[str, float]:
    """{role: RSS MB} of ``procguard run idle_target:work`` (no health port): the worker, which is the
    runner itself, and its watchdog. The target is a module of its own that imports nothing (this
    bench module would bring psutil and argparse into the worker)."""
    (tmp / "idle_target.py").write_text("def work():\n    pass\n")
    env = _env()
    env["PYTHONPATH"] = os.pathsep.join([str(tmp), env["PYTHONPATH"]])
    runner = subprocess.Popen(
        [sys.executable, "-m", "procguard", "run", "idle_target:work", "--state-dir",
         str(tmp / "state"), "--name", "bench-fn", "--health-port", "0", "--interval", "1"],
        env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and psutil.Process(runner.pid).num_threads() < 2:
            time.sleep(0.05)  # until the manager's monitor thread runs
        time.sleep(2.0)  # let start-up allocations settle
        roles = {("worker" if p.pid == runner.pid else _role(p, runner.pid)): p.memory_info().rss / MB
                 for p in _tree(runner.pid, set())}
    finally:
        runner.send_signal(signal.SIGTERM)
        runner.wait(timeout=30)
    return roles


def _cpu_ns(pid: int) -> int:
    """CPU time of ``pid``'s threads in nanoseconds (schedstat: clock ticks would round an idle runner to 0)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/schedstat") as handle:
            total += int(handle.read().split()[0])
    return total


def bare_rss(argv: list[str]) -> float:
    """RSS MB of ``argv`` run bare (idle), measured in the same run."""
    proc = subprocess.Popen(argv)
    try:
        time.sleep(2.0)
        return psutil.Process(proc.pid).memory_info().rss / MB
    finally:
        proc.kill()
        proc.wait()


def _median_range(values: list[float], fmt: str) -> str:
    return f"{format(statistics.median(values), fmt)} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.bench_runner")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child, args.seed)
    with tempfile.TemporaryDirectory(prefix="bench-runner-") as name:
        tmp = Path(name)
        pg = [run_procguard(tmp, seed) for seed in range(args.runs)]
        base = [run_baseline(tmp, seed) for seed in range(args.runs)]
        bare_sleep = bare_rss(["sleep", "60"])
        bare_python = bare_rss([sys.executable, "-c", "import time; time.sleep(60)"])
        rows = [(label, *footprint(tmp, health_port=port)) for label, port in (("no", False), ("on", True))]
        function_roles = function_footprint(tmp)
    overhead_mb = sum(rows[0][1].values())
    goal = "met" if overhead_mb <= GOAL_MB else f"not met ({overhead_mb - GOAL_MB:.1f} MB over)"
    footprint_rows = "\n".join(
        f"| {label} | **{sum(roles.values()):.1f} MB** | "
        + ", ".join(f"{role} {mb:.1f} MB" for role, mb in roles.items())
        + f" | {command_mb:.1f} MB | {cpu_pct:.2f} % |"
        for label, roles, cpu_pct, command_mb in rows
    )
    pg_lat, pg_peak = [p[0] for p in pg], [p[1] for p in pg]
    base_lat, base_peak = [b[0] for b in base], [b[1] for b in base]
    lat_ratio = statistics.median(pg_lat) / statistics.median(base_lat)
    peak_ratio = (statistics.median(pg_peak) - LIMIT_MB) / max(1e-9, statistics.median(base_peak) - LIMIT_MB)
    text = f"""\
## Runner: a command's memory guarded from outside (`python -m bench.bench_runner`)

A plain Python program (no procguard inside) at 170 MB leaking {RATE_MB_S} MB/s against a {LIMIT_MB} MB limit
(the scenario the peers are compared on (head to head, section 3)); {args.runs} runs each, leak phase randomised; median
(min-max); {os.uname().machine}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}. Baseline, measured in the
same run: an outside poller that checks the tree's RSS every {BASELINE_POLL_S:g} s and sends SIGTERM (what
supervisord + memmon on TICK_5 does).

| checker | SIGTERM after crossing | peak RSS | overshoot past the limit |
|---|---|---|---|
| baseline: poll every {BASELINE_POLL_S:g} s | {_median_range(base_lat, ".2f")} s | {_median_range(base_peak, ".0f")} MB | {statistics.median(base_peak) - LIMIT_MB:.0f} MB |
| `procguard run --memory-limit {LIMIT_MB}MB -- ...` | {_median_range(pg_lat, ".2f")} s | {_median_range(pg_peak, ".0f")} MB | {statistics.median(pg_peak) - LIMIT_MB:.0f} MB |
| ratio procguard / baseline | **{lat_ratio:.2f}** | | **{peak_ratio:.2f}** |

Every procguard run ended with a graceful stop (the program's SIGTERM handler ran; exit status 82).

Footprint of a standalone `procguard run -- sleep 60` (idle command), over {FOOTPRINT_WINDOW_S:g} s: overhead =
total RSS of the runner's processes minus the command's (the runner, its /bin/sh orphan watchdog, and a
health responder if there were one). Goal: <= {GOAL_MB:g} MB without a health port: **{goal}**. In the same
run a bare `sleep` uses {bare_sleep:.1f} MB and a bare idle `python` {bare_python:.1f} MB.

| health port | overhead | of which | the command (`sleep`) | CPU of the overhead (from schedstat, ns) |
|---|---|---|---|---|
{footprint_rows}

The runner samples the command once a second (4 times a second near its memory limit) from /proc.

A trivial function worker (`procguard run idle_target:work --health-port 0`, a sync function that
does nothing, in a module that imports nothing; the runner is the worker) uses {sum(function_roles.values()):.1f} MB in all
({", ".join(f"{role} {mb:.1f} MB" for role, mb in function_roles.items())}), against the bare idle `python` above.
"""
    print(text)
    if not args.no_write:
        write_section(SECTION, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
