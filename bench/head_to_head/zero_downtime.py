"""Zero-downtime reload under load: ``procguard reload`` against ``pm2 reload`` and ``circusctl reload``.

``python -m bench.head_to_head.zero_downtime [--reloads 20] [--rate 200] [--only procguard,pm2,circus]``
(peers from ``python -m bench.head_to_head.install``).

Each peer runs two copies of an HTTP service on one loopback port, the way it
does zero-downtime reloads:

- procguard: the example api (``examples/analyticbot/api.py``) with
  ``listen = "127.0.0.1:P"`` and ``instances = 2`` under ``procguard up``
  (its own state directory); ``procguard reload api``;
- PM2: a Node ``http`` server in cluster mode (``instances: 2``, the only
  mode in which ``pm2 reload`` is zero-downtime), closing its server on
  SIGINT; ``pm2 reload api`` (PM2_HOME under bench/.peers);
- circus: the same example api on a circus socket (``[socket:web]``,
  ``use_sockets``, the api's ``--fd $(circus.sockets.web)``), two processes;
  ``circusctl reload web --waiting`` (graceful is circus' default:
  ``--terminate`` is the other way; there is no ``--graceful`` flag).

The load (:mod:`.loadgen`) sends ``rate`` requests/s, one new connection
each, for a steady stretch, then during ``reloads`` reloads one after the
other, then a moment more; a request fails if it is refused, reset, times
out or answers anything but 200. Reported: failed requests by kind, and p50/p99
latency in the steady stretch and during the reloads.

A fourth run shows a failed reload: a function worker serving on the same
kind of socket (``bench/head_to_head/workers/listener.py``) whose new
generation never becomes ready: the reload must exit 1 within ready_timeout
+ grace while the old process keeps answering every request.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .loadgen import LoadGen, Result, summary

REPO = Path(__file__).resolve().parents[2]
PEERS = REPO / "bench" / ".peers"
STEADY_S = 5.0
PROCGUARD = [sys.executable, "-m", "procguard"]

NODE_SERVER = """\
const http = require('http');
const server = http.createServer((req, res) => {
  res.writeHead(200, {'Content-Type': 'application/json', 'Connection': 'close'});
  res.end(JSON.stringify({status: 'ok', pid: process.pid}));
});
server.listen(Number(process.env.PORT), '127.0.0.1');
process.on('SIGINT', () => server.close(() => process.exit(0)));
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def answers(port: int, path: str = "/health") -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            return sock.recv(64).split(b" ")[1:2] == [b"200"]
    except OSError:
        return False


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.1)


def run(argv: list[str], env: dict[str, str] | None = None, timeout: float = 300) -> tuple[int, str, float]:
    started = time.monotonic()
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    return result.returncode, (result.stdout + result.stderr).strip(), time.monotonic() - started


def measure(port: int, path: str, reload: Callable[[], tuple[int, str, float]], reloads: int,
            rate: float) -> dict[str, Any]:
    """Load during a steady stretch, ``reloads`` reloads, and a second after; the figures of each part."""
    with LoadGen(port, path, rate=rate, threads=24) as load:
        time.sleep(STEADY_S)
        first = time.monotonic()
        outcomes = [reload() for _ in range(reloads)]
        last = time.monotonic()
        time.sleep(1.0)
    results: list[Result] = load.results
    steady = [r for r in results if r.sent_at < first]
    during = [r for r in results if first <= r.sent_at <= last]
    return {
        "reloads": len(outcomes),
        "reload_exit_statuses": sorted({rc for rc, _, _ in outcomes}),
        "reload_seconds_median": round(sorted(t for _, _, t in outcomes)[len(outcomes) // 2], 2),
        "all": summary(results),
        "steady": summary(steady),
        "during_reloads": summary(during),
        "last_reload_output": outcomes[-1][1][-300:] if outcomes else "",
    }


# -- procguard ----------------------------------------------------------------------------------


def procguard_run(work: Path, reloads: int, rate: float) -> dict[str, Any]:
    port = free_port()
    env = {**os.environ, "PROCGUARD_STATE_DIR": str(work / "state"), "PYTHONPATH": f"{REPO / 'src'}:{REPO}"}
    config = work / "procguard.toml"
    config.write_text(
        '[project]\nname = "zdt"\n\n[defaults]\ngrace = "10s"\n\n[workers.api]\n'
        f'command = ["{sys.executable}", "-m", "examples.analyticbot.api", "--port", "1"]\n'
        f'cwd = "{REPO}"\nlisten = "127.0.0.1:{port}"\ninstances = 2\n'
        f'env = {{ ANALYTICBOT_DATA_DIR = "{work / "data"}" }}\n'
    )
    try:
        rc, out, _ = run([*PROCGUARD, "up", "-d", "-c", str(config)], env)
        if rc != 0:
            raise RuntimeError(out)
        wait_until(lambda: answers(port), 30, "the api")
        time.sleep(2.5)  # both copies running
        figures = measure(port, "/health", lambda: run([*PROCGUARD, "reload", "api", "-c", str(config)], env),
                          reloads, rate)
        figures["version"] = "procguard " + run([*PROCGUARD, "--version"], env)[1].split()[-1]
        return figures
    finally:
        run([*PROCGUARD, "down", "-c", str(config)], env)


def procguard_never_ready(work: Path, rate: float) -> dict[str, Any]:
    """A reload whose new generation never becomes ready: exit 1, the old one keeps serving."""
    port, health = free_port(), free_port()
    env = {**os.environ, "PROCGUARD_STATE_DIR": str(work / "state"), "PYTHONPATH": f"{REPO / 'src'}:{REPO}"}
    flag = work / "not-ready"
    (work / "facts").mkdir()
    config = work / "procguard.toml"
    config.write_text(
        '[project]\nname = "zdtfail"\n\n[defaults]\ngrace = "5s"\nready_timeout = "10s"\n\n[workers.fn]\n'
        f'run = "bench.head_to_head.workers.listener:serve"\ncwd = "{REPO}"\ninterval = "0.2s"\n'
        f'listen = "127.0.0.1:{port}"\nhealth_port = {health}\n'
        f'env = {{ FACTS_DIR = "{work / "facts"}", NOT_READY = "{flag}" }}\n'
    )
    try:
        rc, out, _ = run([*PROCGUARD, "up", "-d", "-c", str(config)], env)
        if rc != 0:
            raise RuntimeError(out)
        wait_until(lambda: answers(port, "/"), 30, "the listener")
        time.sleep(2.5)
        flag.touch()
        figures = measure(port, "/", lambda: run([*PROCGUARD, "reload", "fn", "-c", str(config)], env), 1, rate)
        history = json.loads(run([*PROCGUARD, "history", "--json", "-n", "0", "-c", str(config)], env)[1])
        figures["history"] = [{k: e.get(k) for k in ("event", "pid", "reason", "detail")} for e in history]
        return figures
    finally:
        run([*PROCGUARD, "down", "-c", str(config)], env)


# -- PM2 -----------------------------------------------------------------------------------------


def pm2_run(work: Path, reloads: int, rate: float) -> dict[str, Any]:
    pm2 = PEERS / "node" / "node_modules" / ".bin" / "pm2"
    if not pm2.exists():
        raise RuntimeError("PM2 is not installed (python -m bench.head_to_head.install)")
    port = free_port()
    home = PEERS / "run" / f"zdt-pm2-{os.getpid()}"
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PM2_HOME": str(home), "PM2_DISCRETE_MODE": "true"}
    (work / "server.js").write_text(NODE_SERVER)
    (work / "ecosystem.config.js").write_text(
        f"module.exports = {{ apps: [{{ name: 'api', script: '{work / 'server.js'}', exec_mode: 'cluster', instances: 2,"
        f" env: {{ PORT: '{port}' }} }}] }};\n"
    )
    try:  # pm2 start leaves a daemon even when it fails: killed in every case
        rc, out, _ = run([str(pm2), "start", str(work / "ecosystem.config.js")], env)
        if rc != 0:
            raise RuntimeError(out)
        wait_until(lambda: answers(port), 30, "the node server")
        time.sleep(2.0)
        figures = measure(port, "/", lambda: run([str(pm2), "reload", "api"], env), reloads, rate)
        package = PEERS / "node" / "node_modules" / "pm2" / "package.json"
        figures["version"] = "pm2 " + json.loads(package.read_text())["version"]
        return figures
    finally:
        run([str(pm2), "kill"], env)
        shutil.rmtree(home, ignore_errors=True)


# -- circus --------------------------------------------------------------------------------------


def circus_run(work: Path, reloads: int, rate: float) -> dict[str, Any]:
    venv = PEERS / "venv" / "bin"
    if not (venv / "circusd").exists():
        raise RuntimeError("circus is not installed (python -m bench.head_to_head.install)")
    port, endpoint, pubsub = free_port(), free_port(), free_port()
    ini = work / "circus.ini"
    ini.write_text(
        f"[circus]\nendpoint = tcp://127.0.0.1:{endpoint}\npubsub_endpoint = tcp://127.0.0.1:{pubsub}\n"
        f"logoutput = {work / 'circusd.log'}\n\n"
        f"[socket:web]\nhost = 127.0.0.1\nport = {port}\n\n"
        f"[watcher:web]\ncmd = {sys.executable}\n"
        f"args = -m examples.analyticbot.api --data-dir {work / 'data'} --fd $(circus.sockets.web)\n"
        f"use_sockets = True\nnumprocesses = 2\nworking_dir = {REPO}\ncopy_env = True\n"
        "graceful_timeout = 10\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    circusd = subprocess.Popen([str(venv / "circusd"), str(ini)], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    ctl = [str(venv / "circusctl"), "--endpoint", f"tcp://127.0.0.1:{endpoint}", "--timeout", "60"]
    try:
        wait_until(lambda: answers(port), 30, "the api under circus")
        time.sleep(2.0)
        figures = measure(port, "/health", lambda: run([*ctl, "reload", "web", "--waiting"], env), reloads, rate)
        figures["version"] = "circus " + run([str(venv / "circusd"), "--version"])[1].strip()
        return figures
    finally:
        run([*ctl, "quit", "--waiting"], env, timeout=60)
        try:
            circusd.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(circusd.pid, signal.SIGKILL)
            circusd.wait()


RUNS: dict[str, Callable[[Path, int, float], dict[str, Any]]] = {
    "procguard": procguard_run, "pm2": pm2_run, "circus": circus_run,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reloads", type=int, default=20)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--only", default="procguard,pm2,circus,never-ready")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args(argv)
    report: dict[str, Any] = {"rate": args.rate, "reloads": args.reloads, "steady_s": STEADY_S}
    for name in args.only.split(","):
        with tempfile.TemporaryDirectory(prefix=f"zdt-{name}-") as tmp:
            print(f"== {name}", flush=True)
            if name == "never-ready":
                figures = procguard_never_ready(Path(tmp), args.rate)
            else:
                figures = RUNS[name](Path(tmp), args.reloads, args.rate)
            report[name] = figures
            print(json.dumps(figures, indent=1), flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
