"""What ``up``'s start-up check of the history costs, by history size.

Run: ``python -m bench.bench_history_check [--rows 10000 100000 1000000] [--repeat 5] [--no-write]``

``up`` opens the history once before the supervisor starts
(:func:`procguard.supervisor.history.close_unfinished_runs`): it checks the
schema, reads every page (``PRAGMA quick_check``) so that a damaged file is
moved aside before anything runs, and closes the runs a dead supervisor
left open. For a history of N rows (one stack, 7 workers, every run
closed, written like the supervisor writes them), this measures the whole
step and the same step without the page check (``History(path)`` plus the
open-runs query), median of ``--repeat`` runs with the file in the page
cache, as it is on a machine that just ran the stack.

Writes its section of docs/benchmarks.md (``<!-- bench:history_check -->``)
unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from bench._report import machine, write_section
from procguard.supervisor.history import History, close_unfinished_runs

_INSERT = (
    "INSERT INTO events (project, worker, time, event, pid, reason, exit_status, runtime_seconds,"
    " peak_memory_bytes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def build(path: Path, rows: int) -> None:
    History(path).close()  # our schema, WAL mode, 0600
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("BEGIN")
    for i in range(rows):
        start = i % 2 == 0
        db.execute(_INSERT, ("bench", f"worker{(i // 2) % 7}", 1.7e9 + i, "start" if start else "stop",
                             10_000 + i // 2, None if start else "requested", None if start else 0,
                             None if start else 3600.0, None if start else 70_000_000))
    db.execute("COMMIT")
    db.close()


def timed(action: object, repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()  # type: ignore[operator]
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def without_page_check(path: Path) -> None:
    history = History(path)
    history.unfinished_starts("bench")
    history.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_history_check", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)
    lines = [
        "## History start-up check (`python -m bench.bench_history_check`)",
        "",
        f"`up`'s start-up step on a history of N rows (every run closed), file in the page cache, "
        f"median of {args.repeat}; {machine()}.",
        "",
        "| rows | file | start-up step (with `quick_check`) | same without the page check | the page check |",
        "|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory(prefix="procguard-bench-history-") as tmp:
        for rows in args.rows:
            path = Path(tmp) / f"history-{rows}.sqlite"
            build(path, rows)
            with_check = timed(lambda p=path: close_unfinished_runs(p, "bench", now=2e9), args.repeat)
            without = timed(lambda p=path: without_page_check(p), args.repeat)
            size_mb = path.stat().st_size / 1e6
            lines.append(f"| {rows:,} | {size_mb:.1f} MB | {with_check * 1000:.1f} ms | {without * 1000:.1f} ms "
                         f"| {(with_check - without) * 1000:.1f} ms |")
            print(lines[-1], flush=True)
    lines += [
        "",
        "Most of the step is the open-runs query (each worker's last row), not the page check; it grows "
        "with the history, which nothing prunes yet.",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section("history_check", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
