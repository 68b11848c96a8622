"""The analyticbot bot: a plain long-running program with no procguard code inside.

It reads the collector's store every ``--every`` seconds and writes a report
(``report.json`` and ``report.txt`` in the data directory): per channel, the
latest subscribers/views/posts and the change since the previous run. It is
meant to be supervised from outside::

    procguard run --name analyticbot-bot -- python -m examples.analyticbot.bot --every 5

On SIGTERM or SIGINT it finishes the report it is writing (each file is
written to a temporary name, flushed and renamed, so a reader never sees
half a report) and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from . import settings


def build_report(store_path: Path) -> dict[str, Any]:
    """The report as a dict, from the two newest complete runs of each user (pure read)."""
    report: dict[str, Any] = {"generated_at": time.time(), "runs": 0, "channels": []}
    if not store_path.exists():
        return report
    conn = sqlite3.connect(f"file:{store_path}?mode=ro", uri=True, timeout=30)
    try:
        try:
            report["runs"] = conn.execute("SELECT COUNT(*) FROM collection_runs").fetchone()[0]
            run_ids = [r[0] for r in conn.execute(
                "SELECT run_id FROM collection_runs ORDER BY run_id DESC LIMIT 2"
            )]
        except sqlite3.OperationalError:  # the collector has not created its tables yet
            return report
        if not run_ids:
            return report
        latest = {row[0]: row for row in conn.execute(
            "SELECT channel_id, title, subscribers, views, posts FROM channel_stats WHERE run_id = ?",
            (run_ids[0],),
        )}
        previous = {}
        if len(run_ids) > 1:
            previous = {row[0]: row for row in conn.execute(
                "SELECT channel_id, title, subscribers, views, posts FROM channel_stats WHERE run_id = ?",
                (run_ids[1],),
            )}
    finally:
        conn.close()
    report["latest_run"] = run_ids[0]
    for cid, (_, title, subs, views, posts) in sorted(latest.items()):
        before = previous.get(cid)
        report["channels"].append({
            "channel_id": cid, "title": title, "subscribers": subs, "views": views, "posts": posts,
            "subscribers_change": subs - before[2] if before else 0,
            "views_change": views - before[3] if before else 0,
        })
    return report


def render_text(report: dict[str, Any]) -> str:
    lines = [f"analyticbot report, {report['runs']} collection runs stored"]
    for ch in report["channels"]:
        lines.append(
            f"  {ch['title']:<14} {ch['subscribers']:>7} subscribers ({ch['subscribers_change']:+d})"
            f"  {ch['views']:>9} views ({ch['views_change']:+d})  {ch['posts']} posts"
        )
    return "\n".join(lines) + "\n"


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file next to ``path``, flush it, and rename it over ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def write_report(data_dir: Path) -> dict[str, Any]:
    report = build_report(data_dir / settings.COLLECTOR_DB)
    write_atomically(data_dir / settings.REPORT_JSON, json.dumps(report, indent=2) + "\n")
    write_atomically(data_dir / settings.REPORT_TXT, render_text(report))
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="analyticbot-bot", description="Write a report from the collector's store."
    )
    parser.add_argument("--every", type=float, default=5.0, help="seconds between reports (default: 5)")
    parser.add_argument("--data-dir", help=settings.DATA_DIR_HELP)
    args = parser.parse_args(argv)
    if args.every <= 0:
        parser.error(f"--every: {args.every!r} must be positive")
    data_dir = settings.data_dir(args.data_dir)
    stopping = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stopping.set()  # only record it: the loop finishes the write in progress

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"bot[{os.getpid()}]: writing reports to {data_dir} every {args.every:g}s", flush=True)
    reports = 0
    while not stopping.is_set():
        try:
            report = write_report(data_dir)
        except sqlite3.Error as error:
            print(f"bot[{os.getpid()}]: cannot read the store: {error}", file=sys.stderr, flush=True)
        else:
            reports += 1
            print(f"bot[{os.getpid()}]: report {reports}: {report['runs']} runs, "
                  f"{len(report['channels'])} channels", flush=True)
        stopping.wait(args.every)
    print(f"bot[{os.getpid()}]: stopped after {reports} reports", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
