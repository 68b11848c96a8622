"""``python -m bench.head_to_head``: procguard against supervisord, circus and PM2, same run.

Needs the peers installed first (``python -m bench.head_to_head.install``,
or ``make bench-peers`` which does both). Writes the raw figures to
bench/results/head_to_head.json and the section between the
``<!-- bench:head-to-head -->`` markers of docs/benchmarks.md, plus a PNG
per scenario under docs/img/.

Options: ``--quick`` (fewer repetitions, shorter windows), ``--only
SCENARIO[,SCENARIO...]`` (repeatable; earlier results of the other scenarios
are kept from the JSON file), ``--tools`` (subset of managers),
``--no-report``. Each scenario's results record the commit and date they
were measured on.
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from . import procs, report, scenarios
from .adapters import ADAPTERS, Adapter, Tools
from .adapters.base import port_in_use

log = logging.getLogger("bench.head_to_head")

REPO = Path(__file__).resolve().parents[2]
PEERS = REPO / "bench" / ".peers"
RESULTS = REPO / "bench" / "results" / "head_to_head.json"
SCENARIOS = ("footprint", "restart", "memory", "orphans", "stop", "storm", "probe", "real_stack", "memory_guard")


def _scenario_list(text: str) -> list[str]:
    """``--only real_stack,memory_guard``: known scenario names, comma-separated."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown or not names:
        msg = f"unknown scenario {', '.join(unknown) or repr(text)} (use: {', '.join(SCENARIOS)})"
        raise argparse.ArgumentTypeError(msg)
    return names


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.head_to_head", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and shorter windows")
    parser.add_argument("--only", action="append", type=_scenario_list, metavar="SCENARIO[,SCENARIO...]",
                        help=f"run only these scenarios (repeatable; of: {', '.join(SCENARIOS)})")
    parser.add_argument("--tools", default=",".join(ADAPTERS), help="comma-separated managers (default: all)")
    parser.add_argument("--no-report", action="store_true", help="do not touch docs/benchmarks.md")
    parser.add_argument("--report-only", action="store_true",
                        help="only re-render docs/benchmarks.md and the plots from the saved results")
    args = parser.parse_args(argv)
    if args.only:
        args.only = list(dict.fromkeys(name for names in args.only for name in names))
    unknown = [t for t in args.tools.split(",") if t not in ADAPTERS]
    if unknown:
        parser.error(f"unknown tool(s) {', '.join(unknown)} (use: {', '.join(ADAPTERS)})")
    return args


def preflight(adapters: list[Adapter]) -> list[str]:
    """Reasons not to run: missing installs, ports or folders in use."""
    problems = []
    tools = adapters[0].tools if adapters else None
    if tools is not None:
        if not (tools.venv_bin / "supervisord").exists() or not (tools.venv_bin / "circusd").exists():
            problems.append(f"peers not installed in {tools.peers_dir} (run: python -m bench.head_to_head.install)")
        if any(a.name == "pm2" for a in adapters) and not tools.pm2.exists():
            problems.append(f"pm2 not installed in {tools.peers_dir / 'node'} (run the install step)")
    for adapter in adapters:
        reason = adapter.in_use()
        if reason:
            problems.append(reason)
    if port_in_use(scenarios.PROBE_PORT):
        problems.append(f"port 127.0.0.1:{scenarios.PROBE_PORT} (probe worker) is in use")
    return problems


def _machine() -> dict[str, Any]:
    import psutil

    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    args = _parse(argv)
    tools = Tools(peers_dir=PEERS, repo_dir=REPO)
    adapters = [ADAPTERS[name](tools) for name in args.tools.split(",")]
    if args.report_only:
        report.publish(json.loads(RESULTS.read_text()), REPO, PEERS)
        return 0
    PEERS.mkdir(parents=True, exist_ok=True)
    lock_file = open(PEERS / "run.lock", "w")  # noqa: SIM115 - held for the whole run
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        sys.stderr.write(f"another benchmark run holds {PEERS / 'run.lock'}; refusing to run\n")
        return 1
    problems = preflight(adapters)
    if problems:
        for problem in problems:
            sys.stderr.write(f"refusing to run: {problem}\n")
        return 1
    # SIGTERM/SIGHUP end the run through the ``finally`` below, so the sweep still happens.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda signum, frame: sys.exit(128 + signum))
    if not procs.become_subreaper():
        sys.stderr.write("could not become a child subreaper (Linux only); refusing to run\n")
        return 1
    settings = scenarios.Settings.quick() if args.quick else scenarios.Settings()
    wanted = args.only or list(SCENARIOS)
    previous: dict[str, Any] = {}
    if RESULTS.exists() and args.only:
        previous = json.loads(RESULTS.read_text())
    results: dict[str, Any] = previous.get("scenarios", {})
    run_root = tools.run_root
    started = time.monotonic()
    commit = _commit()  # the code that runs is the code checked out now, whatever is committed meanwhile
    try:
        for name in wanted:
            t0 = time.monotonic()
            date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
            log.info("scenario %s ...", name)
            if name == "footprint":
                data = scenarios.footprint(adapters, settings)
            elif name == "restart":
                data = scenarios.restart_latency(adapters, settings, tools.python, run_root)
            elif name == "memory":
                data = scenarios.memory_guard(adapters, settings)
            elif name == "orphans":
                data = scenarios.orphans(adapters, settings)
            elif name == "stop":
                data = scenarios.stop_time(adapters, settings)
            elif name == "real_stack":
                data = scenarios.real_stack(adapters, settings)
            elif name == "memory_guard":
                data = scenarios.memory_guard_rounds(adapters, settings)
            elif name == "storm":
                data = scenarios.duplicate_storm(adapters, settings, tools.python, run_root)
            else:
                data = scenarios.probe_latency(settings, tools.python, run_root, REPO)
            if args.only and name in results:  # keep the other tools' figures of an earlier run
                data = {**results[name]["data"], **data}
            results[name] = {"data": data, "seconds": time.monotonic() - t0, "quick": args.quick,
                             "commit": commit, "date": date}
            log.info("scenario %s done in %.0f s", name, time.monotonic() - t0)
            _save(tools, adapters, results, settings)
    finally:
        left = procs.sweep(grace_s=3.0)
        if left:
            log.warning("final sweep ended %d process(es) the scenarios left behind", len(left))
    log.info("all scenarios done in %.0f s", time.monotonic() - started)
    if not args.no_report:
        report.publish(json.loads(RESULTS.read_text()), REPO, PEERS)
    return 0


def _save(tools: Tools, adapters: list[Adapter], results: dict[str, Any], settings: scenarios.Settings) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    versions = dict(previous.get("versions", {}))
    for adapter in adapters:
        try:
            versions[adapter.name] = adapter.version()
        except (OSError, ValueError) as error:
            versions[adapter.name] = f"unknown ({error})"
    payload = {"machine": _machine(), "versions": versions, "settings": dataclasses.asdict(settings),
               "scenarios": results}
    RESULTS.write_text(json.dumps(payload, indent=1, default=str))


def _commit() -> str:
    """The checkout's commit (with ``+dirty`` when it has uncommitted changes), for the report."""
    def git(*args: str) -> str:
        proc = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)
        return proc.stdout.strip() if proc.returncode == 0 else ""
    commit = git("rev-parse", "--short=10", "HEAD") or "unknown"
    return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


if __name__ == "__main__":
    raise SystemExit(main())
