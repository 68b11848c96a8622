"""Probe latency while the worker's main thread is CPU-bound.

Run: ``python -m bench.bench_probe_latency [--seconds 8] [--no-write]``

A worker process runs a pure-Python loop under ProcessManager with a
heartbeat every iteration; the bench probes its HTTP endpoint every 20 ms
and records each answer's latency, and the worker counts its own loop
iterations in the same window. Configurations, all in the same run:

- ``baseline``: no HTTP server (the reference loop rate);
- ``prometheus_client``: its own ``start_http_server`` (a thread in the worker);
- ``procguard thread``: ``serve_health(mode="thread")`` (a thread in the worker);
- ``procguard process``: ``serve_health(mode="process")``, the default: a
  responder process serves snapshots the worker publishes in shared memory.

Nothing is pinned (``--pin`` puts the worker on CPU 0 and everything
else on CPU 1, which flatters in-thread servers: a GIL hand-off between two
threads on one core costs less than between two cores). The configurations
run in rounds, each round with its own baseline, and the loop-rate figure is
the median over rounds of rate / that round's baseline, so drift of a shared
machine does not land on one configuration.

``--supervised``: a command worker's /health answered by ``procguard up``
itself while it supervises 50 workers (``--workers``), all with a memory
limit (so every one is sampled), ten of them with a health port; probes go
to one of those ports every 20 ms. Its own section
(``<!-- bench:probe_latency_supervised -->``). ``--supervised --function``:
the ten workers with a health port are function workers (``run =``, one
process each, no responder): the supervisor answers their ports from the
snapshots they publish (``<!-- bench:probe_latency_supervised_function -->``).

Writes a section of docs/benchmarks.md (between ``<!-- bench:probe_latency -->``
markers) unless ``--no-write``. The worker side is also used by
bench.bench_health_throughput (``--worker MODE``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from procguard.instances.childproc import tree_pids

from ._report import write_section

ROOT = Path(__file__).resolve().parent.parent
WORKER_CPU = 0
OTHER_CPU = 1

MODES = ("baseline", "prometheus_client", "thread", "process")
LABELS = {
    "baseline": "no server (baseline)",
    "prometheus_client": "prometheus_client start_http_server",
    "thread": "procguard, mode=\"thread\"",
    "process": "procguard, mode=\"process\" (default)",
}


# --------------------------------------------------------------------------- worker


def _work() -> int:
    total = 0
    for i in range(300):
        total += i * i
    return total


def run_worker(mode: str, warmup: float, seconds: float, stream: bool = False) -> None:
    """The worker process: serve per ``mode``, loop, print the loop rate of the window.

    With ``stream``, also print ``T <monotonic> <iterations>`` every 0.1 s so
    that the driver can cut the run into segments.
    """
    from procguard import ProcessManager

    manager = ProcessManager(None, 0, 0, 0, heartbeat_timeout_s=60, single_instance=False, handle_signals=False)
    manager.start()
    info: dict[str, object] = {"pid": os.getpid()}
    server = None
    if mode == "prometheus_client":
        import prometheus_client

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        heartbeat_age = prometheus_client.Gauge("worker_heartbeat_age_seconds", "age")
        heartbeat_age.set_function(lambda: manager.snapshot().heartbeat_age_seconds or 0.0)
        prometheus_client.start_http_server(port, addr="127.0.0.1")
        info["port"] = port
    elif mode in ("thread", "process"):
        from procguard.health.server import serve_health

        server = serve_health(manager.snapshot, mode=mode)  # type: ignore[arg-type]
        info["port"] = server.port
        info["responder_pid"] = server.responder_pid
    print(json.dumps(info), flush=True)
    start = time.monotonic()
    window_start = start + warmup
    window_end = window_start + seconds
    n = 0
    first = last = None
    t_first = t_last = 0.0
    next_tick = start
    while manager.should_continue():
        manager.heartbeat()
        _work()
        n += 1
        if n & 255 == 0:
            now = time.monotonic()
            if stream and now >= next_tick:
                sys.stdout.write(f"T {now:.6f} {n}\n")
                sys.stdout.flush()
                next_tick = now + 0.1
            if first is None and now >= window_start:
                first, t_first = n, now
            elif first is not None and now >= window_end:
                last, t_last = n, now
                break
    assert first is not None and last is not None
    print(json.dumps({"rate": (last - first) / (t_last - t_first)}), flush=True)
    if server is not None:
        server.close()
    manager.shutdown()


# --------------------------------------------------------------------------- driver


def pin(pid: int, cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > cpu:
        try:
            os.sched_setaffinity(pid, {cpu})
        except OSError:
            pass


PINNED = [False]
LOAD = ["n/a"]


def start_worker(
    mode: str, warmup: float, seconds: float, *, stream: bool = False
) -> tuple[subprocess.Popen[str], dict[str, object]]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.bench_probe_latency", "--worker", mode,
         "--warmup", str(warmup), "--seconds", str(seconds), *(["--stream"] if stream else [])],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True,
    )
    if PINNED[0]:
        pin(proc.pid, WORKER_CPU)
    assert proc.stdout is not None
    info = json.loads(proc.stdout.readline())
    responder = info.get("responder_pid")
    if PINNED[0] and isinstance(responder, int):
        pin(responder, OTHER_CPU)
    return proc, info


def finish_worker(proc: subprocess.Popen[str]) -> float:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    proc.wait(timeout=30)
    return float(json.loads(line)["rate"])


def probe(port: int, path: str, timeout: float = 5.0) -> float:
    """One request on a fresh connection; seconds until the whole response was read."""
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    elapsed = time.perf_counter() - start
    if not data.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")):
        raise RuntimeError(f"unexpected answer from {path}: {data[:80]!r}")
    return elapsed


def load_average() -> str:
    """The 1-minute load average, to show how busy the shared machine was."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "n/a"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def measure(mode: str, path: str | None, warmup: float, seconds: float) -> dict[str, object]:
    proc, info = start_worker(mode, warmup, seconds)
    latencies: list[float] = []
    try:
        time.sleep(warmup)
        end = time.monotonic() + seconds - 0.2  # stay inside the worker's window
        while time.monotonic() < end:
            if path is not None:
                latencies.append(probe(int(info["port"]), path))  # type: ignore[call-overload]
            time.sleep(0.02)
        rate = finish_worker(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return {"mode": mode, "path": path, "rate": rate, "latencies": latencies}


DESIGN_NOTE = """\
What procguard does (src/procguard/health/server.py): by default `serve_health` binds the port in the
worker, then hands the listening socket to a small **responder process** and serves nothing itself. A
daemon thread of the worker publishes the worker's snapshot (health verdict, heartbeat age, figures)
into shared memory (a memfd, guarded by a sequence counter) every 0.25 s and at once on
`HealthServer.refresh()`; the responder answers /health, /ready and /metrics from the latest snapshot,
with its own interpreter and GIL, on a single-threaded selector loop (request deadline 5 s, at most 256
connections, the oldest idle one dropped first). A worker that cannot publish for `stale_after_s`
(5 s by default: stuck in C code holding the GIL, stopped, swapping) therefore reads as **503
"no update from worker for N s"** on /health and /ready instead of a socket that never answers; times
in /metrics are advanced by the snapshot's age. The responder dies with the worker (parent-death
signal, plus a parent-PID check every 0.5 s) and is restarted if it dies alone. `mode="thread"` runs
the same loop in a thread of the worker instead (no extra process; pays the GIL wait shown below).
"""


def render(rows: list[dict[str, object]], seconds: float, rounds: int) -> str:
    lines = [
        "## Probe latency with a CPU-bound worker",
        "",
        DESIGN_NOTE,
        f"`python -m bench.bench_probe_latency` — {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d')}. The worker's main thread runs a pure-Python loop under ProcessManager "
        f"with a heartbeat every iteration; one probe every 20 ms (fresh connection each), {rounds} rounds of "
        f"{seconds:g} s per configuration{', pinned' if PINNED[0] else ', not pinned'}. "
        "Worker loop: median over rounds of its iteration rate divided by the same round's baseline "
        f"(no server), with the range. Load average (1 min) at start / end: {LOAD[0]} / {load_average()}.",
        "",
        "| server | path | probes | p50 ms | p99 ms | max ms | worker loop vs baseline |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lat = [x * 1000 for x in row["latencies"]]  # type: ignore[attr-defined]
        ratios: list[float] = row["ratios"]  # type: ignore[assignment]
        if lat:
            cells = f"{len(lat)} | {statistics.median(lat):.2f} | {percentile(lat, 99):.2f} | {max(lat):.2f}"
        else:
            cells = "- | - | - | -"
        rel = f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})"
        lines.append(f"| {LABELS[str(row['mode'])]} | {row['path'] or '-'} | {cells} | {rel} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- supervised


IDLE = "import time\nwhile True:\n    time.sleep(3600)\n"
#: The function workers' target (``--function``): an iteration that does nothing.
IDLE_TARGET = "def idle():\n    pass\n"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def supervised(
    workers: int, with_port: int, seconds: float, warmup: float, *, function: bool = False
) -> dict[str, object]:
    """Probe a worker's /health (and /metrics) served by ``procguard up`` with ``workers`` workers.

    ``function``: the workers with a port are function workers (``run =``), else commands.
    """
    import shutil
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="pg-probe-"))
    state = work / "state"
    state.mkdir(mode=0o700)
    (work / "idle.py").write_text(IDLE)
    (work / "probe_idle.py").write_text(IDLE_TARGET)
    ports = [_free_port() for _ in range(with_port)]
    lines = ["[project]", 'name = "probebench"', "", "[defaults]", 'memory_limit = "200MB"', 'grace = "5s"']
    for i in range(workers):
        lines += ["", f"[workers.w{i:02d}]"]
        if function and i < with_port:
            lines += ['run = "probe_idle:idle"', 'interval = "1s"', f"cwd = {json.dumps(str(work))}"]
        else:
            lines.append(f"command = [{json.dumps(sys.executable)}, {json.dumps(str(work / 'idle.py'))}]")
        if i < with_port:
            lines.append(f"health_port = {ports[i]}")
    config = work / "procguard.toml"
    config.write_text("\n".join(lines) + "\n")
    env = dict(os.environ, PROCGUARD_STATE_DIR=str(state), PROCGUARD_LOG_LEVEL="WARNING")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    up = subprocess.Popen([sys.executable, "-m", "procguard", "up", "-c", str(config)], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    health: list[float] = []
    metrics: list[float] = []
    rss_kb = helpers_kb = 0
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                probe(ports[0], "/health", timeout=1.0)
                break
            except (OSError, RuntimeError):
                if time.monotonic() > deadline or up.poll() is not None:
                    raise SystemExit("bench: the supervised worker's /health never answered 200") from None
                time.sleep(0.1)
        time.sleep(warmup)
        end = time.monotonic() + seconds
        turn = 0
        while time.monotonic() < end:
            turn += 1
            if turn % 10 == 0:
                metrics.append(probe(ports[1 % with_port], "/metrics?format=prometheus"))
            else:
                health.append(probe(ports[0], "/health"))
            time.sleep(0.02)
        rss_kb = _rss_kb(up.pid)
        helpers_kb = sum(_rss_kb(pid) for pid in tree_pids(up.pid)[1:] if not _is_idle_worker(pid))
    finally:
        up.terminate()
        try:
            up.wait(timeout=30)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait()
        shutil.rmtree(work, ignore_errors=True)
    return {"health": health, "metrics": metrics, "rss_mb": rss_kb / 1024, "helpers_mb": helpers_kb / 1024}


def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0



def _is_idle_worker(pid: int) -> bool:
    """The worker program itself (not a procguard process in front of it, not the watchdog)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return len(argv) > 1 and (argv[1].endswith(b"idle.py") or b"probe_idle:idle" in argv)


def render_supervised(
    result: dict[str, object], workers: int, with_port: int, seconds: float, *, function: bool = False
) -> str:
    health = [x * 1000 for x in result["health"]]  # type: ignore[attr-defined]
    metrics = [x * 1000 for x in result["metrics"]]  # type: ignore[attr-defined]
    p99 = percentile(health, 99)
    if function:
        title = "## Probe latency of a function worker served by `procguard up`"
        how = (
            "Under `procguard up` a `run =` worker with a `health_port` is one process, the worker: no "
            "responder process beside it. The supervisor binds the port itself and answers /health, /ready "
            "and /metrics from the snapshots the worker publishes a few times a second into a shared mapping "
            "the supervisor handed it, on the one HTTP thread that also serves the status page."
        )
        flags, ported = "--supervised --function", "of them function workers (`run =`, 1 s interval) with a health port"
    else:
        title = "## Probe latency of a command worker served by `procguard up`"
        how = (
            "Under `procguard up` a `command =` worker with a `health_port` runs without any `procguard run` "
            "in front of it: the supervisor binds the port itself and answers /health, /ready and /metrics "
            "from its own samples of the worker's tree, on the one HTTP thread that also serves the status "
            "page (a selector loop, the health servers' limits)."
        )
        flags, ported = "--supervised", "of them with a health port"
    lines = [
        title,
        "",
        how,
        "",
        f"`python -m bench.bench_probe_latency {flags}` — {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, {time.strftime('%Y-%m-%d')}. The supervisor supervises {workers} idle "
        f"workers, each with a memory limit (all sampled), {with_port} {ported}; "
        f"a probe every 20 ms on a fresh connection for {seconds:g} s (every tenth one a Prometheus scrape "
        f"of another worker's /metrics). RSS at the end: supervisor {result['rss_mb']:.1f} MB, every other "
        f"procguard process under it (watchdog, runners if any) {result['helpers_mb']:.1f} MB (the "
        "supervisor's includes prometheus_client, loaded by the first Prometheus scrape as its status "
        "page's /metrics does; about 20 MB before any). "
        f"Load average (1 min) at start / end: {LOAD[0]} / {load_average()}.",
        "",
        "| path | probes | p50 ms | p99 ms | max ms |",
        "|---|---|---|---|---|",
        f"| /health | {len(health)} | {statistics.median(health):.2f} | {p99:.2f} | {max(health):.2f} |",
        f"| /metrics?format=prometheus | {len(metrics)} | {statistics.median(metrics):.2f} | "
        f"{percentile(metrics, 99):.2f} | {max(metrics):.2f} |",
        "",
        f"Goal p99 < 10 ms for /health while the supervisor supervises {workers} workers: "
        f"**{'met' if p99 < 10 else 'not met'}** ({p99:.2f} ms).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_probe_latency", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="per configuration and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--pin", action="store_true", help="worker on CPU 0, everything else on CPU 1")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    parser.add_argument("--supervised", action="store_true",
                        help="only the command worker served by procguard up (its own section)")
    parser.add_argument("--function", action="store_true",
                        help="with --supervised: the workers with a port are function workers")
    parser.add_argument("--workers", type=int, default=50, help="with --supervised: workers supervised")
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--stream", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        run_worker(args.worker, args.warmup, args.seconds, args.stream)
        return 0
    PINNED[0] = args.pin
    LOAD[0] = load_average()
    if args.supervised:
        seconds = max(args.seconds, 20.0)
        with_port = min(10, args.workers)
        result = supervised(args.workers, with_port, seconds, args.warmup, function=args.function)
        text = render_supervised(result, args.workers, with_port, seconds, function=args.function)
        print(text)
        if not args.no_write:
            write_section("probe_latency_supervised_function" if args.function else "probe_latency_supervised", text)
        return 0
    if args.pin:
        pin(os.getpid(), OTHER_CPU)
    plan: list[tuple[str, str | None]] = [
        ("baseline", None),
        ("prometheus_client", "/metrics"),
        ("thread", "/health"),
        ("process", "/health"),
        ("process", "/metrics?format=prometheus"),
    ]
    rows = {key: {"mode": key[0], "path": key[1], "latencies": [], "ratios": []} for key in plan}
    for round_no in range(args.rounds):
        base_rate = 0.0
        for mode, path in plan:
            result = measure(mode, path, args.warmup, args.seconds)
            rate = float(result["rate"])  # type: ignore[arg-type]
            if mode == "baseline":
                base_rate = rate
            row = rows[(mode, path)]
            row["latencies"].extend(result["latencies"])  # type: ignore[attr-defined]
            row["ratios"].append(rate / base_rate)  # type: ignore[attr-defined]
            print(f"round {round_no + 1}: {mode:18} {path or '-':28} {rate:9.0f} it/s", file=sys.stderr)
    text = render(list(rows.values()), args.seconds, args.rounds)  # type: ignore[arg-type]
    ours = [x * 1000 for x in rows[("process", "/health")]["latencies"]]  # type: ignore[union-attr]
    theirs = [x * 1000 for x in rows[("prometheus_client", "/metrics")]["latencies"]]  # type: ignore[union-attr]
    p99 = percentile(ours, 99)
    text += (
        f"\nGoal p99 <= 10 ms for /health with the main thread CPU-bound: "
        f"**{'met' if p99 <= 10 else 'not met'}** ({p99:.2f} ms; prometheus_client in the same run: "
        f"p50 {statistics.median(theirs):.1f} ms, p99 {percentile(theirs, 99):.1f} ms). In-thread "
        "servers wait for the GIL at each socket call; the responder process does not.\n"
    )
    print(text)
    if not args.no_write:
        write_section("probe_latency", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
