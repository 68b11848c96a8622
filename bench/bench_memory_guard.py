"""How fast ProcessManager catches a leak, and how far past the limit memory gets.

Run: ``python -m bench.bench_memory_guard [--runs N] [--no-write]``.

Each run starts a real worker process under ``ProcessManager(memory_limit_mb=200)``
with every other setting at its default. The worker fills itself quickly to
170 MB, waits a random fraction of the sampling interval (so the leak's phase
against the sampler differs between runs), then leaks at a steady rate
(10 MB/s, then 100 MB/s) while its loop heartbeats every 10 ms. It logs
``time rss`` every iteration, so both the moment RSS crossed the limit and the
peak are read from the worker's own measurements, and a final ``stop`` line
when ``should_continue()`` turned False (graceful stop, status 82). A worker
killed by the hard ceiling (status 86) writes no stop line: its last line
is then the peak.

Detection latency = stop (or hard exit) time - first time RSS was over the
limit. Overshoot = (peak RSS - limit) / limit. Goal: <= 5% at 10 MB/s.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MB = 1024 * 1024
LIMIT_MB = 200
PREFILL_MB = 170
PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss() -> int:
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * PAGE


def child(rate_mb_s: float, out: str, seed: int) -> int:
    """The leaking worker (runs in its own process)."""
    from procguard.manager import DEFAULT_SAMPLE_INTERVAL_S, ProcessManager

    manager = ProcessManager(memory_limit_mb=LIMIT_MB)
    manager.start()
    hold: list[bytes] = []
    while _rss() < PREFILL_MB * MB:
        hold.append(b"\x01" * MB)
    time.sleep(random.Random(seed).uniform(0, DEFAULT_SAMPLE_INTERVAL_S))
    with open(out, "w", buffering=1) as log:
        started = time.monotonic()
        leaked = 0
        while manager.should_continue():
            manager.heartbeat()
            now = time.monotonic()
            due = int(rate_mb_s * MB * (now - started))
            if due > leaked:
                hold.append(b"\x01" * (due - leaked))
                leaked = due
            log.write(f"{now} {_rss()}\n")
            manager.sleep(0.01)
        log.write(f"stop {time.monotonic()} {manager.stop_reason}\n")
    return manager.shutdown()


def one_run(rate: float, seed: int) -> dict[str, float | int | str]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rss.log"
        proc = subprocess.run(
            [sys.executable, "-m", "bench.bench_memory_guard", "--child", str(rate), str(out), str(seed)],
            capture_output=True,
            timeout=120,
            check=False,
        )
        lines = out.read_text().splitlines()
    points = [(float(t), int(r)) for t, r in (ln.split() for ln in lines if not ln.startswith("stop"))]
    stop = [ln for ln in lines if ln.startswith("stop")]
    limit = LIMIT_MB * MB
    crossed = next(t for t, r in points if r > limit)
    stopped = float(stop[0].split()[1]) if stop else points[-1][0]
    peak = max(r for _, r in points)
    return {
        "status": proc.returncode,
        "latency_s": stopped - crossed,
        "peak_mb": peak / MB,
        "overshoot_pct": (peak - limit) / limit * 100,
        "action": "graceful (82)" if proc.returncode == 82 else f"hard exit ({proc.returncode})",
    }


def summarize(runs: list[dict[str, float | int | str]], key: str) -> str:
    values = [float(r[key]) for r in runs]
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child(float(argv[1]), argv[2], int(argv[3]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    from procguard.limits import HARD_LIMIT_FACTOR, WorkerLimits
    from procguard.manager import DEFAULT_SAMPLE_INTERVAL_S

    default_strikes = WorkerLimits().memory_strikes  # the one declared default

    from .bench_hotloop import machine, write_section

    rows = []
    raw = {}
    for rate in (10.0, 100.0):
        runs = [one_run(rate, seed) for seed in range(args.runs)]
        raw[rate] = runs
        actions = sorted({str(r["action"]) for r in runs})
        rows.append(
            f"| {rate:g} MB/s | {summarize(runs, 'latency_s')} s | {summarize(runs, 'peak_mb')} MB "
            f"| **{summarize(runs, 'overshoot_pct')} %** | {', '.join(actions)} |"
        )
    table = (
        "## ProcessManager memory guard (`python -m bench.bench_memory_guard`)\n\n"
        f"A real worker leaking at a steady rate against `memory_limit_mb={LIMIT_MB}`, all other settings "
        f"default (sample every {DEFAULT_SAMPLE_INTERVAL_S:g} s, {default_strikes} strikes, hard "
        f"ceiling {HARD_LIMIT_FACTOR:g} x = {LIMIT_MB * HARD_LIMIT_FACTOR:g} MB); {args.runs} runs per rate, "
        f"leak phase randomised against the sampler; median (min-max); {machine()}.\n\n"
        "| leak | detection after crossing | peak RSS | overshoot of the limit | how it stopped |\n"
        "|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
        "Goal: overshoot <= 5 % at 10 MB/s. For comparison, the peers' default check intervals: "
        "PM2 `max_memory_restart` every 30 s (main pid only), circus `resource_watcher` every 60 s "
        "over 3 strikes, supervisord + memmon on TICK_60 (recommended). Measured earlier on this kind of "
        "machine with a 20 MB/s leak against the same 200 MB limit (not re-run by this script): PM2 "
        "acted after 14.5 s at 489 MB, circus (defaults) after 231 s at 4.8 GB, memmon TICK_60 after "
        "42.5 s at 1.05 GB, each by killing the worker rather than stopping it gracefully.\n"
    )
    print(table)
    print(json.dumps({str(k): v for k, v in raw.items()}, indent=1))
    if not args.no_write:
        write_section("manager-memory-guard", table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
