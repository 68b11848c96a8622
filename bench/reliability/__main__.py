"""``python -m bench.reliability``: run the rows, print the table, write its section of docs/benchmarks.md."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path

import psutil

from bench._report import machine, write_section
from procguard.instances.spawn import become_child_subreaper

from .harness import PYTHON, ROOT, RowResult, leftovers


@dataclass(frozen=True)
class Scale:
    """How many times each row tries; ``--quick`` divides every count by QUICK."""

    runner_kills: int = 20
    supervisor_kills: int = 20
    start_rounds: int = 20
    starts_per_round: int = 20
    impostor_checks: int = 1000
    hostile_requests: int = 10_000
    idle_connections: int = 1_000
    slowloris_connections: int = 100
    slowloris_s: float = 8.0
    state_repeats: int = 5
    deploy_every: int = 1  # every hostile value; quick: every QUICK-th
    sigterm_rounds: int = 20

    QUICK = 10

    def quick(self) -> Scale:
        divided = {f.name: max(1, getattr(self, f.name) // self.QUICK) for f in fields(self)
                   if f.name not in ("starts_per_round", "deploy_every", "slowloris_s")}
        return replace(self, **divided, slowloris_s=3.0, deploy_every=self.QUICK)


Row = Callable[[Scale, Path], RowResult]


def _rows() -> dict[int, Row]:
    from . import deploy_values, http_rows, impostors, orphans, sigterm, starts, statedir

    def http_load(scale: Scale) -> http_rows.Load:
        return http_rows.Load(scale.hostile_requests, scale.idle_connections, scale.slowloris_connections,
                              scale.slowloris_s)

    rows: dict[int, Row] = {
        1: lambda scale, work: orphans.run_runner_kills(scale.runner_kills, work),
        2: lambda scale, work: orphans.run_supervisor_kills(scale.supervisor_kills, work),
        3: lambda scale, work: starts.run_concurrent_starts(scale.start_rounds, scale.starts_per_round, work),
        4: lambda scale, work: impostors.run_impostors(scale.impostor_checks, work),
        5: lambda scale, work: http_rows.run_health(http_load(scale), work),
        6: lambda scale, work: http_rows.run_status_page(http_load(scale), work),
        7: lambda scale, work: statedir.run_hostile_state(scale.state_repeats, work),
        8: lambda scale, work: deploy_values.run_deploy_values(work, every=scale.deploy_every),
        9: lambda scale, work: sigterm.run_sigterm(scale.sigterm_rounds, work),
    }
    return rows


def run_row(number: int, row: Row, scale: Scale, work: Path) -> RowResult:
    """One row in its own directory; whatever it leaves running is stopped and counted against it."""
    directory = work / f"row{number}"
    directory.mkdir()
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    started = time.monotonic()
    try:
        result = row(scale, directory)
    except Exception as exc:  # a row that cannot run is a failed row, with the reason
        result = RowResult(number, f"row {number}", "nothing", 1, "could not run", time.monotonic() - started,
                           [f"{type(exc).__name__}: {exc}"])
    left = leftovers(keep=before)
    if left:
        result.failed += 1
        result.problems.append(f"left running after the row (stopped by PID): {'; '.join(left)}")
    return result


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def anonymous(result: RowResult, work: Path) -> RowResult:
    """The result with this machine's paths taken out of its problems (they go into the docs)."""
    def clean(text: str) -> str:
        return text.replace(str(work), "$TMP").replace(PYTHON, "python").replace(str(ROOT) + "/", "")

    result.problems = [clean(p) for p in result.problems]
    result.measured = clean(result.measured)
    return result


def render(results: list[RowResult], *, quick: bool, seconds: float) -> str:
    lines = [
        "## Reliability: procguard's promises tried many times over (`python -m bench.reliability`)",
        "",
        f"Each row tries one way a promise could break, over and over, and counts the tries that failed "
        f"(a try that could not even be carried out counts as failed). {machine()}, "
        f"{time.strftime('%Y-%m-%d')}{', `--quick` counts' if quick else ''}; the whole run took "
        f"{seconds / 60:.1f} min. Everything on 127.0.0.1, in private state directories, on free ports; every "
        f"process a try starts is stopped by PID. Target: **0 failed in every row**.",
        "",
        "| # | what is tried | tried | failed | measured | time |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        failed = f"**{r.failed}**" if r.failed == 0 else f"**{r.failed} FAILED**"
        lines.append(f"| {r.number} | {_cell(r.title)} | {_cell(r.tried)} | {failed} | {_cell(r.measured)} | "
                     f"{r.seconds:.0f} s |")
    failing = [r for r in results if not r.ok]
    if failing:
        lines += ["", "What failed (the first distinct problems of each failing row, with how often each came):", ""]
        for r in failing:
            lines.append(f"- row {r.number}: " + "; ".join(_cell(p)[:400] for p in r.problems[:4]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reliability", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"every count divided by {Scale.QUICK}")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    parser.add_argument("--only", nargs="+", type=int, metavar="N", help="run only these rows")
    args = parser.parse_args(argv)
    rows = _rows()
    if args.only:
        unknown = sorted(set(args.only) - set(rows))
        if unknown:
            print(f"unknown row(s) {unknown}: choose from {sorted(rows)}", file=sys.stderr)
            return 2
        rows = {n: row for n, row in rows.items() if n in args.only}
    scale = Scale().quick() if args.quick else Scale()
    become_child_subreaper()
    results = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="procguard-reliability-") as tmp:
        work = Path(tmp)
        # a procguard started without a state directory of its own lands here, never in the user's
        os.environ["PROCGUARD_STATE_DIR"] = str(work / "default-state")
        for var in ("PROCGUARD_INSTANCE", "NOTIFY_SOCKET", "WATCHDOG_USEC", "PROCGUARD_HEALTH_TOKEN"):
            os.environ.pop(var, None)
        for number, row in rows.items():
            print(f"== row {number} ...", file=sys.stderr, flush=True)
            result = anonymous(run_row(number, row, scale, work), work)
            print(f"== row {number}: {result.failed} failed of {result.tried} in {result.seconds:.0f} s",
                  file=sys.stderr, flush=True)
            results.append(result)
    text = render(results, quick=args.quick, seconds=time.monotonic() - started)
    print(text)
    if not args.no_write:
        write_section("reliability", text)
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
