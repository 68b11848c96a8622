"""The "real stack" scenario: what each manager's own processes cost beside a realistic stack.

The stack is three programs with a memory limit each, the shape of the
example stack: an HTTP service (procguard also serves a health port for it),
a periodic job (a function worker under procguard, the same loop as a
program for the peers) and a plain command; 1, 10 and 50 copies of the
three. Each manager enforces the limits its users' way: procguard's
``memory_limit``, supervisord with superlance's memmon (one ``-p``/``-g``
per program, TICK_60 as its docs recommend), PM2's ``max_memory_restart``.

What counts as the manager's: every process the tool runs that is not a
worker program. A worker is a process that logged ``ready`` itself (the HTTP
service, the job, the command, and any child they started), so a function
worker's process is a worker even though procguard's runner code runs in it,
while a ``procguard run`` wrapping a command, a guardian, a watchdog, memmon
or PM2's daemon is the manager's, even when it sits between the manager and
a worker.
"""

from __future__ import annotations

import http.client
import logging
import os
import socket
import statistics
import time
from dataclasses import dataclass
from typing import Any

import psutil

from . import procs
from .adapters import Adapter
from .events import read_events, ready_children, ready_workers
from .stack import Guard, Stack, WorkerSpec

log = logging.getLogger(__name__)

#: The managers the scenario compares (circus has no per-program memory limit its users reach for first).
TOOLS = ("procguard", "supervisord", "pm2")

#: The three programs, in the order the report lists them.
PROGRAMS = ("http", "job", "cmd")


@dataclass(frozen=True)
class StackSettings:
    """Sizes (copies of the three programs), settle time and samples.

    The sampling window (``samples`` x ``sample_every_s``) spans 60 s, so it
    holds one of memmon's TICK_60 checks and two of PM2's 30 s checks: a
    shorter one could miss the peers' periodic work entirely.
    """

    sizes: tuple[int, ...] = (1, 10, 50)
    limit_mib: int = 200
    settle_s: float = 5.0
    samples: int = 61
    sample_every_s: float = 1.0


def specs(size: int) -> tuple[WorkerSpec, ...]:
    """``size`` copies of the HTTP service, the periodic job and the plain command."""
    return (WorkerSpec("http", "httpsvc", count=size, health=True),
            WorkerSpec("job", "ticker", count=size, function="tick", interval_s=1.0),
            WorkerSpec("cmd", "idle", count=size))


def stack_for(size: int, limit_mib: int, health_ports: dict[str, int]) -> Stack:
    """The scenario's stack: every program under the same memory limit, enforced at the tool's defaults."""
    workers = specs(size)
    return Stack(workers=workers, guard=Guard(mode="defaults", limit_mib=limit_mib, programs=PROGRAMS),
                 health_ports=health_ports)


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports the kernel picked on 127.0.0.1 (held together, so no two are equal)."""
    held: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket()
            held.append(s)
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in held]
    finally:
        for s in held:
            s.close()


def role(cmdline: list[str]) -> str:
    """A short, copy-independent name for a manager process (instance names and paths left out)."""
    parts = [p for p in cmdline if p.strip()]
    if not parts:
        return "(unknown)"
    if len(parts) == 1:  # a process that rewrote its title (PM2's "PM2 v7: God Daemon (/path)")
        return parts[0].split(" (")[0][:40]
    base = [os.path.basename(p) for p in parts]
    if len(base) > 2 and base[1] == "-c":  # an inline script (procguard's watchdog)
        return f"{base[0]} -c (inline script)"
    if len(base) > 2 and base[1] == "-m":  # python -m package [subcommand]
        sub = base[3] if len(base) > 3 and not base[3].startswith("-") else ""
        return " ".join(x for x in ("python -m", base[2], sub) if x)
    if base[0].startswith("python") and len(base) > 1:  # python script: the script names it
        return base[1]
    return base[0]


def classify(adapter: Adapter) -> tuple[list[int], dict[str, list[int]]]:
    """(manager-side PIDs, program -> worker PIDs) among the harness's live descendants."""
    events = read_events(adapter.layout.events_dir)
    ready = ready_workers(events)
    worker_like = set(ready) | set(ready_children(events))
    manager: list[int] = []
    workers: dict[str, list[int]] = {}
    for proc in procs.descendants():
        if not procs.is_alive(proc.pid):
            continue
        if proc.pid in worker_like:
            event = ready.get(proc.pid)
            name = str(event.data.get("name", "")) if event else ""
            workers.setdefault(name.split("-")[0] or "child", []).append(proc.pid)
        else:
            manager.append(proc.pid)
    return manager, workers


def breakdown(pids: list[int]) -> list[list[Any]]:
    """[[role, processes, total RSS]] of ``pids``, heaviest role first."""
    groups: dict[str, list[int]] = {}
    for pid in pids:
        try:
            name = role(psutil.Process(pid).cmdline())
        except psutil.Error:
            continue
        groups.setdefault(name, []).append(pid)
    rows = [[name, len(members), procs.rss_of(members)] for name, members in groups.items()]
    return sorted(rows, key=lambda row: -row[2])


def _get(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def answered(ports: list[int], path: str) -> int:
    """How many of ``ports`` answer ``GET path`` with 200."""
    ok = 0
    for port in ports:
        try:
            ok += _get(port, path) == 200
        except OSError:
            pass
    return ok


def measure(adapter: Adapter, size: int, settings: StackSettings) -> dict[str, Any]:
    """Start the stack of ``size`` copies under ``adapter``, let it settle, sample the manager side."""
    served = [name for spec in specs(size) if spec.health for name in spec.instance_names()]
    stack = stack_for(size, settings.limit_mib, dict(zip(served, free_ports(len(served)), strict=True)))
    n = len(PROGRAMS) * size
    t0 = time.monotonic()
    adapter.start(stack)
    if not adapter.wait_ready(n, timeout=60 + 3 * n):
        return {"error": f"only {len(adapter.worker_pids())} of {n} programs became ready"}
    ready_s = time.monotonic() - t0
    time.sleep(settings.settle_s)  # start-up work (imports, first samples, PM2's first poll) settles
    manager_rss: list[float] = []
    worker_rss: dict[str, list[float]] = {}
    manager, workers = classify(adapter)
    cpu_start = procs.cpu_ns_of(manager)
    w0 = time.monotonic()
    for i in range(settings.samples):
        if i:
            time.sleep(settings.sample_every_s)
        manager, workers = classify(adapter)
        manager_rss.append(procs.rss_of(manager))
        for program, pids in workers.items():
            worker_rss.setdefault(program, []).append(procs.rss_of(pids) / max(1, len(pids)))
    window = time.monotonic() - w0
    cpu_end = procs.cpu_ns_of(manager)
    cpu_ns = sum(cpu_end[pid] - cpu_start.get(pid, 0) for pid in cpu_end)
    events = ready_workers(read_events(adapter.layout.events_dir))
    http_ports = [int(str(e.data["port"])) for pid, e in events.items()
                  if "port" in e.data and procs.is_alive(pid)]
    result: dict[str, Any] = {
        "size": size,
        "manager_rss": statistics.median(manager_rss),
        "manager_rss_range": [min(manager_rss), max(manager_rss)],
        "manager_processes": len(manager),
        "breakdown": breakdown(manager),
        "cpu_pct": 100.0 * cpu_ns / 1e9 / window if window > 0 else None,
        "worker_rss_each": {p: statistics.median(v) for p, v in worker_rss.items()},
        "workers": {p: len(v) for p, v in workers.items()},
        "ready_s": ready_s,
        "samples": len(manager_rss),
        "window_s": window,
        "http_answered": [answered(http_ports, "/"), len(http_ports)],
    }
    if stack.health_ports and adapter.name == "procguard":
        result["health_answered"] = [answered(list(stack.health_ports.values()), "/health"),
                                     len(stack.health_ports)]
    return result
