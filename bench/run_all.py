"""Run every benchmark under bench/ one after another (``make bench``).

Each benchmark is its own module (``python -m bench.<name>``) that measures
its baseline in the same run and writes its section of docs/benchmarks.md;
this script only runs them in turn, in separate processes so that one
benchmark's memory or threads never colour the next one's figures. The
head-to-head comparison with the peers installs them first and takes much
longer: it runs with ``make bench-peers``.

Usage: ``python -m bench.run_all [--only NAME ...] [--list]``
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent


def discover() -> list[str]:
    """Module names of the single-topic benchmarks, in a stable order; then the reliability table."""
    names = sorted(p.stem for p in BENCH_DIR.glob("bench_*.py"))
    if (BENCH_DIR / "dev_restart_before_after.py").exists():
        names.append("dev_restart_before_after")
    if (BENCH_DIR / "reliability" / "__main__.py").exists():
        names.append("reliability")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run_all", description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these benchmarks")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args(argv)
    names = discover()
    if args.list:
        print("\n".join(names))
        return 0
    if args.only:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            print(f"unknown benchmark(s): {', '.join(unknown)} (use one of: {', '.join(names)})", file=sys.stderr)
            return 2
        names = [n for n in names if n in args.only]
    failed = []
    for name in names:
        print(f"== {name}", flush=True)
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", f"bench.{name}"], cwd=BENCH_DIR.parent, check=False)
        print(f"== {name}: exit {result.returncode} in {time.monotonic() - started:.0f}s", flush=True)
        if result.returncode != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
