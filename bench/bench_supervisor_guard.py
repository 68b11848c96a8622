"""How fast ``procguard up`` catches a leaking command worker at its default settings.

Run: ``python -m bench.bench_supervisor_guard [--runs 10] [--baseline SRC] [--no-write]``

One ``procguard up`` runs one command worker with ``memory_limit = "200MB"``
and every other setting at its default (the supervisor's own settings too:
every worker sampled every 2 s, 3 strikes). The worker is a plain Python
program: it waits a random 0-2 s (so the leak starts at a random point of
the supervisor's sampling period), then leaks 20 MB/s in steps of 0.2 MB
every 10 ms, writing ``time rss`` after each step (``time.monotonic()``, the
system-wide clock). Its SIGTERM handler writes ``term time`` and stops the
leak; it then exits 0. After each stop the supervisor restarts it (a
memory_limit stop is a planned recycle), which is the next run.

From the worker's own record: **detection after crossing** = SIGTERM time
minus the first time its RSS was over the limit; **peak** = the highest RSS
it recorded (nothing is allocated after SIGTERM). Each stop's reason is read
from the stack's history (``memory_limit`` = graceful recycle).
``--baseline SRC`` runs the same scenario with a procguard from another
source tree (an earlier commit's ``src/``, exported with ``git archive``)
in the same session. Writes its section of docs/benchmarks.md
(``<!-- bench:supervisor-guard -->``) unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from bench._report import machine, write_section

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
MIB = 1024 * 1024
LIMIT_MIB = 200
RATE_MIB_S = 20
DELAY_MAX_S = 2.0
GOAL_MS = 100.0
GOAL_PEAK = 1.02

LEAKER = textwrap.dedent("""
    import os, random, signal, sys, time
    out = os.path.join(sys.argv[1], "%d.log" % os.getpid())
    rate, step_s = float(sys.argv[2]) * 1024 * 1024, 0.01
    page = os.sysconf("SC_PAGE_SIZE")
    log = open(out, "w", buffering=1)
    stopped = []

    def rss():
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * page

    def on_term(signum, frame):
        if not stopped:
            stopped.append(time.monotonic())
            log.write("term %.6f\\n" % stopped[0])

    signal.signal(signal.SIGTERM, on_term)
    time.sleep(random.uniform(0.0, float(sys.argv[3])))
    hoard, next_t = [], time.monotonic()
    while not stopped:
        hoard.append(b"\\x01" * int(rate * step_s))  # filled, so every page is resident
        log.write("%.6f %d\\n" % (time.monotonic(), rss()))
        next_t += step_s
        time.sleep(max(0.0, next_t - time.monotonic()))
    log.write("exit\\n")
""")


def run_stack(work: Path, src: Path, runs: int) -> list[dict[str, float | str]]:
    """``runs`` leaks under one ``procguard up`` from ``src``; one result per run."""
    work.mkdir(parents=True)
    logs = work / "logs"
    logs.mkdir()
    script = work / "leaker.py"
    script.write_text(LEAKER)
    config = work / "procguard.toml"
    config.write_text(textwrap.dedent(f"""\
        [project]
        name = "guard"

        [workers.leaker]
        command = ["{PY}", "{script}", "{logs}", "{RATE_MIB_S}", "{DELAY_MAX_S}"]
        memory_limit = "{LIMIT_MIB}MB"
    """))
    state = work / "state"
    env = dict(os.environ, PROCGUARD_STATE_DIR=str(state), PROCGUARD_LOG_LEVEL="WARNING")
    env.pop("PROCGUARD_SUPERVISOR_TUNING", None)  # the supervisor's own defaults
    env["PYTHONPATH"] = os.pathsep.join([str(src), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    up = subprocess.Popen([PY, "-m", "procguard", "up", "-c", str(config)], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + runs * 30 + 30
        while len(_finished(logs)) < runs:
            if up.poll() is not None:
                raise SystemExit(f"bench: procguard up exited {up.returncode}")
            if time.monotonic() > deadline:
                raise SystemExit("bench: the leaks were not all stopped in time")
            time.sleep(0.2)
    finally:
        subprocess.run([PY, "-m", "procguard", "down", "-c", str(config)], env=env,
                       capture_output=True, timeout=60, check=False)
        try:
            up.wait(timeout=30)
        except subprocess.TimeoutExpired:
            up.send_signal(signal.SIGKILL)
            up.wait()
    reasons = _stop_reasons(state, src)
    results = []
    for path in sorted(_finished(logs), key=lambda p: p.stat().st_mtime)[:runs]:
        results.append(_one(path, reasons.get(int(path.stem), "?")))
    return results


def _finished(logs: Path) -> list[Path]:
    return [p for p in logs.glob("*.log") if p.read_text().endswith("exit\n")]


def _one(path: Path, reason: str) -> dict[str, float | str]:
    limit = LIMIT_MIB * MIB
    points, term = [], None
    for line in path.read_text().splitlines():
        parts = line.split()
        if parts[0] == "term":
            term = float(parts[1])
        elif parts[0] != "exit":
            points.append((float(parts[0]), int(parts[1])))
    crossed = next(t for t, rss in points if rss > limit)
    assert term is not None
    peak = max(rss for _, rss in points)
    return {"detect_ms": (term - crossed) * 1000, "peak_mib": peak / MIB, "peak_ratio": peak / limit,
            "reason": reason}


def _stop_reasons(state: Path, src: Path) -> dict[int, str]:
    """pid -> reason of each stop in the stack's history (read by that procguard's own reader)."""
    code = ("import sys; from pathlib import Path; from procguard.supervisor.history import db_path, read_events\n"
            "for e in read_events(db_path(Path(sys.argv[1])), project='guard', limit=0):\n"
            "    if e.event == 'stop': print(e.pid, e.reason)\n")
    env = dict(os.environ, PYTHONPATH=str(src))
    out = subprocess.run([PY, "-c", code, str(state)], env=env, capture_output=True, text=True, check=True).stdout
    return {int(pid): reason for pid, reason in (line.split() for line in out.splitlines())}


def summary(results: list[dict[str, float | str]]) -> dict[str, float]:
    detect = [float(r["detect_ms"]) for r in results]
    peak = [float(r["peak_ratio"]) for r in results]
    return {"detect_median_ms": statistics.median(detect), "detect_worst_ms": max(detect),
            "detect_best_ms": min(detect), "peak_median": statistics.median(peak), "peak_worst": max(peak)}


def render(runs: int, rows: list[tuple[str, list[dict[str, float | str]]]]) -> str:
    lines = [
        "## Supervisor memory guard at defaults (`python -m bench.bench_supervisor_guard`)",
        "",
        f"A command worker under `procguard up` leaking {RATE_MIB_S} MB/s (0.2 MB every 10 ms) against "
        f"`memory_limit = \"{LIMIT_MIB}MB\"`, every other setting at its default (sampled every 2 s, "
        f"3 strikes); {runs} runs, each leak starting after a random 0-{DELAY_MAX_S:g} s; {machine()}. "
        "Detection runs from the first RSS the worker recorded over the limit to the SIGTERM it received; "
        "the peak is the highest RSS it recorded.",
        "",
        "| procguard | detection after crossing, median | worst | best | peak / limit, median | worst "
        "| how it stopped |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, results in rows:
        s = summary(results)
        reasons = ", ".join(sorted({str(r["reason"]) for r in results}))
        lines.append(
            f"| {label} | **{s['detect_median_ms']:.0f} ms** | {s['detect_worst_ms']:.0f} ms "
            f"| {s['detect_best_ms']:.0f} ms | {s['peak_median']:.3f} | {s['peak_worst']:.3f} | {reasons} |"
        )
    lines += [
        "",
        f"Goal: detection <= {GOAL_MS:.0f} ms after the crossing, peak <= {GOAL_PEAK} x the limit, "
        "graceful (`memory_limit`). How: the growth between samples predicts when the limit will be "
        "reached and the next sample is taken halfway there, so the samples close in on the crossing "
        "(down to 25 ms apart); over the limit, the strikes are counted 25 ms apart.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--baseline", type=Path, metavar="SRC",
                        help="also run the scenario with a procguard from this source tree (an earlier src/)")
    parser.add_argument("--baseline-name", default="baseline", metavar="TEXT",
                        help="its row's name in the report (e.g. 'before abc1234')")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="pg-bench-guard-") as tmp:
        sources = [("this version", ROOT / "src")]
        if args.baseline is not None:
            sources.append((args.baseline_name, args.baseline.resolve()))
        for index, (label, src) in enumerate(sources):
            print(f"{label} ...", flush=True)
            results = run_stack(Path(tmp) / str(index), src, args.runs)
            for result in results:
                print(result, flush=True)
            print(summary(results), flush=True)
            rows.append((label, results))
    text = render(args.runs, rows)
    print(text)
    if not args.no_write:
        write_section("supervisor-guard", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
