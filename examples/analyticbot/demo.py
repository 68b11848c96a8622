"""Run the analyticbot stack in the foreground, each service under ``procguard run``.

::

    python -m examples.analyticbot.demo                 # until Ctrl-C
    python -m examples.analyticbot.demo --duration 30   # stops by itself

Three ``procguard run`` processes, one per service:

- ``analyticbot-api``: command mode, ``-- python -m examples.analyticbot.api``
  (the API has its own /health; the runner serves one for it too);
- ``analyticbot-collector``: function mode,
  ``examples.analyticbot.collector:collect`` every ``--interval``;
- ``analyticbot-bot``: command mode, ``-- python -m examples.analyticbot.bot``
  (a plain program with no procguard inside).

Ctrl-C (or SIGTERM, or the end of ``--duration``) stops them all: SIGTERM to
each runner, which stops its service gracefully; SIGKILL only if one
overruns the grace. The runners are started with the parent-death signal,
so they do not outlive the demo even if it is killed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from procguard.instances.marker import new_marker
from procguard.instances.spawn import spawn_process
from procguard.instances.statedir import namespace_of

from . import settings

REPO_ROOT = Path(__file__).resolve().parents[2]
STOP_WAIT_S = 20.0


@dataclass
class Service:
    name: str
    argv: list[str]
    health_url: str | None
    proc: subprocess.Popen[bytes] | None = None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _child_env(data_dir: Path, api_url: str, user_id: int, write_delay_ms: float) -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(REPO_ROOT / "src"), str(REPO_ROOT)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    env["ANALYTICBOT_DATA_DIR"] = str(data_dir)
    env["ANALYTICBOT_API_URL"] = api_url
    env["ANALYTICBOT_USER_ID"] = str(user_id)
    env["ANALYTICBOT_WRITE_DELAY_MS"] = str(write_delay_ms)
    return env


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def build_services(args: argparse.Namespace) -> list[Service]:
    """The three ``procguard run`` command lines (pure: no process is started)."""
    py = sys.executable
    ports = [_free_port() for _ in range(4)] if args.free_ports else [
        args.api_port, args.health_port_base, args.health_port_base + 1, args.health_port_base + 2
    ]
    api_port, collector_health, api_health, bot_health = ports
    run = [py, "-m", "procguard", "run"]
    if args.state_dir:
        run += ["--state-dir", args.state_dir]
    return [
        Service(
            "analyticbot-api",
            [*run, "--name", "analyticbot-api", "--health-port", str(api_health), "--max-runtime", "0",
             "--memory-limit", "256MB", "--grace", "10s", "--",
             py, "-m", "examples.analyticbot.api", "--port", str(api_port)],
            f"http://127.0.0.1:{api_health}/health",
        ),
        Service(
            "analyticbot-collector",
            [*run, "examples.analyticbot.collector:collect", "--name", "analyticbot-collector",
             "--interval", args.interval, "--health-port", str(collector_health),
             "--memory-limit", "512MB", "--grace", "15s"],
            f"http://127.0.0.1:{collector_health}/health",
        ),
        Service(
            "analyticbot-bot",
            [*run, "--name", "analyticbot-bot", "--health-port", str(bot_health), "--memory-limit", "256MB",
             "--grace", "10s", "--", py, "-m", "examples.analyticbot.bot", "--every", str(args.report_every)],
            f"http://127.0.0.1:{bot_health}/health",
        ),
    ]


def _api_port(service: Service) -> int:
    return int(service.argv[service.argv.index("--port") + 1])


def _stop_all(services: Sequence[Service]) -> dict[str, int | None]:
    """SIGTERM every runner (newest first), wait, SIGKILL stragglers; their exit statuses."""
    running = [s for s in reversed(services) if s.proc is not None and s.proc.poll() is None]
    for service in running:
        assert service.proc is not None
        print(f"demo: stopping {service.name} (pid {service.proc.pid})", flush=True)
        service.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_WAIT_S
    for service in running:
        assert service.proc is not None
        try:
            service.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"demo: {service.name} did not stop in {STOP_WAIT_S:g}s; killing it", flush=True)
            service.proc.kill()
            service.proc.wait()
    return {s.name: (s.proc.returncode if s.proc else None) for s in services}


def _summary(data_dir: Path) -> str:
    store = data_dir / settings.COLLECTOR_DB
    runs = 0
    if store.exists():
        conn = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=10)
        try:
            runs = conn.execute("SELECT COUNT(*) FROM collection_runs").fetchone()[0]
        except sqlite3.Error:
            runs = 0
        finally:
            conn.close()
    report = data_dir / settings.REPORT_JSON
    channels = 0
    if report.exists():
        channels = len(json.loads(report.read_text()).get("channels", []))
    return f"{runs} collection runs stored in {store}; latest report ({channels} channels) in {report}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="analyticbot-demo", description="Run the analyticbot example stack."
    )
    parser.add_argument("--duration", type=float, default=0.0,
                        help="stop after this many seconds (default: run until Ctrl-C)")
    parser.add_argument("--data-dir", help=settings.DATA_DIR_HELP)
    parser.add_argument("--state-dir", help="procguard state directory (default: procguard's own default)")
    parser.add_argument("--interval", default="5s", help="collector interval (default: 5s)")
    parser.add_argument("--report-every", type=float, default=5.0,
                        help="bot report period, seconds (default: 5)")
    parser.add_argument("--api-port", type=int, default=settings.DEFAULT_API_PORT,
                        help=f"API port (default: {settings.DEFAULT_API_PORT})")
    parser.add_argument("--health-port-base", type=int, default=9091,
                        help="health ports: collector BASE, api BASE+1, bot BASE+2 (default: 9091)")
    parser.add_argument("--free-ports", action="store_true", help="pick free ports instead of the fixed ones")
    parser.add_argument("--user-id", type=int, default=123,
                        help="user the collector works for (default: 123)")
    parser.add_argument("--write-delay-ms", type=float, default=20.0,
                        help="collector's simulated slow storage per row (default: 20)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    data_dir = settings.data_dir(args.data_dir).resolve()
    services = build_services(args)
    api_url = f"http://127.0.0.1:{_api_port(services[0])}"
    env = _child_env(data_dir, api_url, args.user_id, args.write_delay_ms)
    stopping = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    marker = new_marker("analyticbot-demo", namespace_of())  # what plain cleanup commands see
    failed: str | None = None
    try:
        for service in services:
            if stopping.is_set():
                break
            service.proc = spawn_process(service.argv, marker=marker, env=env, cwd=str(REPO_ROOT))
            print(f"demo: started {service.name} (pid {service.proc.pid})", flush=True)
            if service is services[0]:
                deadline = time.monotonic() + 30
                while not _http_ok(f"{api_url}/health"):
                    if service.proc.poll() is not None or time.monotonic() > deadline or stopping.is_set():
                        failed = f"{service.name} did not come up (exit {service.proc.poll()})"
                        break
                    stopping.wait(0.1)
                if failed:
                    break
        if not failed:
            print("\nanalyticbot is running. Where to look:", flush=True)
            print(f"  API                      {api_url}/api/channels  ({api_url}/health)")
            for service in services:
                print(f"  {service.name:<24} {service.health_url}  (/ready, /metrics)")
            print(f"  data                     {data_dir}  (collector.sqlite3, report.txt)")
            print("  status                   procguard ps")
            print("Ctrl-C stops everything." if not args.duration else f"Stopping in {args.duration:g}s.",
                  flush=True)
        end = time.monotonic() + args.duration if args.duration else None
        while not failed and not stopping.is_set():
            for service in services:
                if service.proc is not None and service.proc.poll() is not None:
                    failed = f"{service.name} exited with status {service.proc.returncode}"
            if end is not None and time.monotonic() >= end:
                break
            stopping.wait(0.2)
    finally:
        statuses = _stop_all(services)
    if failed:
        print(f"demo: {failed}", file=sys.stderr, flush=True)
    print("demo: exit statuses: " + ", ".join(f"{k} {v}" for k, v in statuses.items()), flush=True)
    print(f"demo: {_summary(data_dir)}", flush=True)
    clean = all(v in (0, 128 + signal.SIGTERM) for v in statuses.values())
    return 0 if clean and not failed else 1


if __name__ == "__main__":
    raise SystemExit(main())
