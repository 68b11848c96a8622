"""Throughput of /health under 50 concurrent clients, and what that load costs the worker.

Run: ``python -m bench.bench_health_throughput [--seconds 10] [--clients 50] [--paced 300] [--no-write]``

The worker is the CPU-bound, heartbeat-every-iteration loop of
bench.bench_probe_latency, reporting its iteration count every 0.1 s. 50
asyncio clients in this process request ``/health`` (a fresh connection per
request, as probes do). For each server, one worker's run alternates
2-second segments, ``--seconds`` of each kind in total:

- **own**: the clients hit the worker's own server back to back (closed
  loop): requests/s, latency, and the worker's loop rate under that load;
- **idle**: no load: the reference loop rate;
- **own paced** / **twin paced**: the same ``--paced`` requests/s, aimed at the
  worker's own server or at the health server of another, idle process.
  Equal volume on both sides, so own paced / twin paced isolates what
  serving costs the worker from what the load costs the machine.

The worker is pinned to CPU 0, the load generator and responders to CPU 1.
Because the kinds alternate inside one worker's life, drift of a shared
machine lands on all of them alike; ratios are medians of adjacent pairs.

Writes a section of docs/benchmarks.md (``<!-- bench:health_throughput -->``)
unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from bisect import bisect_left

from .bench_probe_latency import (
    LABELS,
    OTHER_CPU,
    PINNED,
    ROOT,
    load_average,
    percentile,
    pin,
    start_worker,
    write_section,
)

SEGMENT_S = 2.0
SETTLE_S = 0.2  # skipped at the start of each segment
KINDS = ("own", "idle", "own_paced", "twin_paced")

_TWIN = r"""
import os, sys
from procguard.health.server import serve_health
from procguard.snapshot import HealthStatus, WorkerSnapshot
snap = WorkerSnapshot(name="twin", pid=os.getpid(), health=HealthStatus(True), ready=HealthStatus(True))
server = serve_health(lambda: snap, mode="process")
print(server.port, server.responder_pid, flush=True)
sys.stdin.read()
server.close()
"""


async def _client(
    port: int, path: bytes, stop_at: float, interval: float, latencies: list[float], errors: list[str]
) -> None:
    request = b"GET " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    next_at = time.monotonic()
    while True:
        if interval:
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        if time.monotonic() >= stop_at:
            return
        start = time.perf_counter()
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
            writer.write(request)
            data = await asyncio.wait_for(reader.read(), 5)
            writer.close()
        except (OSError, asyncio.TimeoutError) as exc:
            errors.append(type(exc).__name__)
            continue
        if not data.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")):
            errors.append(data[:40].decode(errors="replace"))
            continue
        latencies.append(time.perf_counter() - start)


def load(port: int, path: str, clients: int, seconds: float, rate: float = 0.0) -> tuple[list[float], list[str]]:
    """``clients`` concurrent clients for ``seconds``; back to back, or ``rate`` requests/s in all."""
    latencies: list[float] = []
    errors: list[str] = []
    interval = clients / rate if rate else 0.0

    async def run() -> None:
        stop_at = time.monotonic() + seconds
        await asyncio.gather(
            *(_client(port, path.encode(), stop_at, interval, latencies, errors) for _ in range(clients))
        )

    asyncio.run(run())
    return latencies, errors


class Ticks:
    """The worker's ``T <monotonic> <iterations>`` lines, read in a thread."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.times: list[float] = []
        self.counts: list[int] = []
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("T "):
                _, t, n = line.split()
                self.times.append(float(t))
                self.counts.append(int(n))

    def rate(self, start: float, end: float) -> float:
        i = bisect_left(self.times, start)
        j = bisect_left(self.times, end) - 1
        if j <= i:
            return float("nan")
        return (self.counts[j] - self.counts[i]) / (self.times[j] - self.times[i])


def start_twin() -> tuple[subprocess.Popen[str], int]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    twin = subprocess.Popen([sys.executable, "-c", _TWIN], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            env=env, text=True)
    pin(twin.pid, OTHER_CPU)
    assert twin.stdout is not None
    port, responder = (int(x) for x in twin.stdout.readline().split())
    pin(responder, OTHER_CPU)
    return twin, port


def measure(mode: str, clients: int, seconds: float, paced: float, twin_port: int) -> dict[str, object]:
    cycles = max(1, round(seconds / SEGMENT_S))
    proc, info = start_worker(mode, 1.0, cycles * len(KINDS) * SEGMENT_S * 3 + 30.0, stream=True)
    ticks = Ticks(proc)
    own_port = int(info["port"])  # type: ignore[call-overload]
    own_path = "/metrics" if mode == "prometheus_client" else "/health"
    rates: dict[str, list[float]] = {kind: [] for kind in KINDS}
    served: dict[str, int] = dict.fromkeys(KINDS, 0)
    latencies: list[float] = []
    errors: list[str] = []
    try:
        time.sleep(1.0)
        for cycle in range(cycles):
            order = KINDS if cycle % 2 == 0 else (KINDS[1], KINDS[0], KINDS[3], KINDS[2])
            for kind in order:
                start = time.monotonic()
                if kind == "idle":
                    time.sleep(SEGMENT_S)
                elif kind == "own":
                    lat, err = load(own_port, own_path, clients, SEGMENT_S)
                    latencies += lat
                    errors += err
                    served[kind] += len(lat)
                else:
                    port, path = (own_port, own_path) if kind == "own_paced" else (twin_port, "/health")
                    lat, _ = load(port, path, clients, SEGMENT_S, paced)
                    served[kind] += len(lat)
                end = time.monotonic()
                time.sleep(0.15)  # let the worker's tick after `end` arrive
                rates[kind].append(ticks.rate(start + SETTLE_S, end))
    finally:
        proc.kill()
        proc.wait()
    return {"mode": mode, "rates": rates, "served": served, "latencies": latencies, "errors": errors,
            "load_seconds": cycles * SEGMENT_S}


def paired(rates: dict[str, list[float]], a: str, b: str) -> float:
    ratios = [x / y for x, y in zip(rates[a], rates[b], strict=True) if x == x and y == y]
    return statistics.median(ratios) if ratios else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_health_throughput",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="of each kind of segment")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--paced", type=float, default=300.0, help="requests/s of the paced segments")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)
    PINNED[0] = True
    load_at_start = load_average()
    pin(os.getpid(), OTHER_CPU)
    twin, twin_port = start_twin()
    results = []
    try:
        for mode in ("process", "thread", "prometheus_client"):
            r = measure(mode, args.clients, args.seconds, args.paced, twin_port)
            rates: dict[str, list[float]] = r["rates"]  # type: ignore[assignment]
            print(f"{mode:18} loop rates { {k: [round(x) for x in v] for k, v in rates.items()} } "
                  f"requests {r['served']}", file=sys.stderr)
            results.append(r)
    finally:
        assert twin.stdin is not None
        twin.stdin.close()
        try:
            twin.wait(timeout=10)
        except subprocess.TimeoutExpired:
            twin.kill()
            twin.wait()
    lines = [
        "## /health throughput under concurrent clients",
        "",
        f"`python -m bench.bench_health_throughput` — {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, {time.strftime('%Y-%m-%d')}. {args.clients} asyncio clients, a fresh "
        f"connection per request, against the CPU-bound worker of the probe-latency bench; the worker pinned "
        "to CPU 0, load generator and responders to CPU 1 (so requests/s is bounded by that one core, which "
        "the load generator itself mostly uses). One worker per server alternates 2-second segments "
        f"({args.seconds:g} s of each kind): clients back to back on the worker's server (requests/s, "
        "latency, *loop under load / idle*), no load (idle), and a paced "
        f"{args.paced:g} requests/s aimed either at the worker's server or at another idle process's "
        "server: **loop own / twin at equal volume** is what serving costs the worker itself, apart from "
        "what the same load costs any process on this machine (shared caches and memory bandwidth, kernel "
        "networking, the host's scheduling of two virtual CPUs). Ratios are medians of adjacent pairs. "
        f"Load average (1 min) at start / end: {load_at_start} / {load_average()}.",
        "",
        "| server | requests/s | errors | p50 ms | p99 ms | loop under load / idle "
        f"| loop own / twin at {args.paced:g} req/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        rates = r["rates"]  # type: ignore[assignment]
        lat = [x * 1000 for x in r["latencies"]]  # type: ignore[attr-defined]
        rps = len(lat) / float(r["load_seconds"])  # type: ignore[arg-type]
        p50 = f"{statistics.median(lat):.1f}" if lat else "-"
        p99 = f"{percentile(lat, 99):.1f}" if lat else "-"
        path = "/metrics" if r["mode"] == "prometheus_client" else "/health"
        lines.append(
            f"| {LABELS[str(r['mode'])]} ({path}) | {rps:.0f} | {len(r['errors'])} | {p50} | {p99} "  # type: ignore[arg-type]
            f"| {paired(rates, 'own', 'idle'):.3f} | **{paired(rates, 'own_paced', 'twin_paced'):.3f}** |"
        )
    process = next(r for r in results if r["mode"] == "process")
    cost = paired(process["rates"], "own_paced", "twin_paced")  # type: ignore[arg-type]
    under_load = paired(process["rates"], "own", "idle")  # type: ignore[arg-type]
    lines += [
        "",
        f"Goal (worker slowed <= 5% by the load) with the default process mode: serving itself slows the "
        f"loop by {(1 - cost) * 100:.1f}% at equal volume (own / twin {cost:.3f}; a negative figure is "
        "noise; "
        f"**{'met' if cost >= 0.95 else 'not met'}**): the worker never touches a request, it only "
        f"publishes a snapshot 4 times a second. Under the closed-loop load the loop runs at "
        f"{under_load:.3f} of idle, which is the machine's own interference between its two CPUs: the "
        "load generator saturates CPU 1.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        write_section("health_throughput", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
