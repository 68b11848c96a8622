"""The seven head-to-head scenarios of issue 8, each run against every manager in turn.

Every scenario function takes the adapters (and a :class:`Settings`) and
returns plain JSON-able data: ``{tool: {metric: value-or-summary-dict}}``.
Each tool's part runs inside ``try/finally`` with the adapter's teardown (the
tool's own shutdown, then a sweep of the harness's descendants by PID), and
an error in one tool's part is recorded, not fatal to the run.
"""

from __future__ import annotations

import http.client
import logging
import os
import random
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from . import procs
from .adapters import Adapter, ProcguardAdapter
from .events import read_events, ready_children, ready_workers
from .real_stack import TOOLS as REAL_STACK_TOOLS
from .real_stack import StackSettings, measure
from .stack import Guard, GuardMode, Layout, Stack, WorkerSpec
from .stats import percentile, summarize

log = logging.getLogger(__name__)

Result = dict[str, Any]

#: Ports of the probe-latency worker (checked free before the run).
PROBE_PORT = 29191


@dataclass(frozen=True)
class Settings:
    """Repetitions and windows; ``quick()`` trades precision for a few minutes' run."""

    footprint_window_s: float = 30.0
    footprint_sizes: tuple[int, ...] = (1, 50)
    restarts: int = 10
    restart_min_uptime_s: float = 1.5
    guard_reps: dict[str, int] | None = None
    guard_budget_s: float = 90.0
    guard_delay_max_s: float = 5.0
    orphan_wait_s: float = 3.0
    stop_workers: int = 50
    stop_delay_s: float = 0.5
    stop_reps: int = 2
    storm_starts: int = 10
    storm_workers: int = 3
    probe_requests: int = 300
    #: the memory-guard rounds: how many, and which tool at which setting (interleaved, one run each per round)
    guard_rounds: int = 12
    guard_round_tools: tuple[tuple[str, GuardMode], ...] = (
        ("procguard", "defaults"), ("pm2", "tight"), ("supervisord", "tight"))
    real_stack: StackSettings = field(default_factory=StackSettings)

    def reps_for(self, mode: str) -> int:
        return (self.guard_reps or {"tight": 3, "defaults": 2})[mode]

    @classmethod
    def quick(cls) -> Settings:
        return cls(footprint_window_s=10.0, restarts=4, guard_reps={"tight": 1, "defaults": 1},
                   guard_budget_s=40.0, stop_reps=1, storm_starts=10, probe_requests=100, guard_rounds=2,
                   real_stack=StackSettings(sizes=(1, 10), settle_s=3.0, samples=3))


def _guarded(adapter: Adapter, part: Callable[[], Result]) -> Result:
    """Run one tool's part of a scenario; always tear the tool down afterwards."""
    try:
        return part()
    except Exception as error:  # a broken peer must not abort the other tools' figures
        log.exception("%s failed", adapter.name)
        return {"error": f"{type(error).__name__}: {error}"}
    finally:
        leftovers = adapter.teardown()
        if leftovers:
            log.info("%s: swept %d leftover process(es) after the scenario", adapter.name, len(leftovers))


def _describe(pids: list[int]) -> list[str]:
    names = []
    for pid in pids:
        try:
            cmd = [part for part in psutil.Process(pid).cmdline() if part.strip()]
            if len(cmd) == 1:  # a process that rewrote its title (PM2's "God Daemon (...)")
                names.append(cmd[0].split(" (")[0][:40])
            elif len(cmd) > 2 and cmd[1] == "-c":  # an inline script: its first words only
                names.append(f"{os.path.basename(cmd[0])} -c '{cmd[2].split()[0] if cmd[2].split() else ''} ...'")
            else:
                names.append(" ".join(os.path.basename(c) for c in cmd[:3])[:60])
        except psutil.Error:
            names.append("(exited)")
    return names


# -- 1. footprint ---------------------------------------------------------------------------
def footprint(adapters: list[Adapter], settings: Settings) -> Result:
    """Manager RSS and CPU over a window with 1 and 50 idle workers."""
    results: Result = {}
    for size in settings.footprint_sizes:
        for adapter in adapters:
            def part(adapter: Adapter = adapter, size: int = size) -> Result:
                adapter.start(Stack(workers=(WorkerSpec("idle", "idle", count=size),)))
                if not adapter.wait_ready(size, timeout=120):
                    return {"error": f"only {len(adapter.worker_pids())} of {size} workers became ready"}
                time.sleep(3.0)  # let start-up work settle before the window opens
                rss_samples: list[float] = []
                cpu_start: dict[int, float] = {}
                for pid in adapter.manager_side():
                    cpu_start[pid] = procs.cpu_seconds_of([pid])
                t0 = time.monotonic()
                deadline = t0 + settings.footprint_window_s
                manager: list[int] = []
                while time.monotonic() < deadline:
                    manager = adapter.manager_side()
                    rss_samples.append(procs.rss_of(manager))
                    time.sleep(1.0)
                elapsed = time.monotonic() - t0
                cpu = sum(procs.cpu_seconds_of([pid]) - cpu_start.get(pid, 0.0) for pid in manager)
                workers = adapter.worker_pids()
                return {
                    "rss": _sd(rss_samples),
                    "cpu_pct": 100.0 * cpu / elapsed,
                    "manager_processes": _describe(manager),
                    "breakdown": [[name, procs.rss_of([pid])] for name, pid in zip(_describe(manager), manager,
                                                                                     strict=False)],
                    "worker_rss": _sd([procs.rss_of([pid]) for pid in workers]),
                    "workers": len(workers),
                }
            results[f"{adapter.name}@{size}"] = _guarded(adapter, part)
    return results


def _sd(values: list[float]) -> dict[str, float] | None:
    summary = summarize(values)
    return summary.to_dict() if summary else None


# -- 2. restart latency -----------------------------------------------------------------------
def _newest_worker(events_dir: Path) -> tuple[int, float] | None:
    ready = ready_workers(read_events(events_dir))
    alive = [(e.t, pid) for pid, e in ready.items() if procs.is_alive(pid)]
    if not alive:
        return None
    t, pid = max(alive)
    return pid, t


def _crash_loop(events_dir: Path, count: int, min_uptime_s: float,
                respawn: Callable[[int], None] | None = None) -> Result:
    """SIGKILL the worker ``count`` times; time each crash to the replacement's ``ready``."""
    latencies: list[float] = []
    note = ""
    for _ in range(count):
        if not procs.wait_until(lambda: _newest_worker(events_dir) is not None, 60):
            note = "no worker running"
            break
        found = _newest_worker(events_dir)
        assert found is not None
        pid, ready_t = found
        time.sleep(max(0.0, ready_t + min_uptime_s - time.monotonic()))
        t0 = time.monotonic()
        procs.signal_pid(pid, signal.SIGKILL)
        if respawn is not None:
            respawn(pid)

        def replaced(pid: int = pid, t0: float = t0) -> float | None:
            ready = ready_workers(read_events(events_dir))
            times = [e.t for p, e in ready.items() if p != pid and e.t > t0]
            return min(times) if times else None

        if not procs.wait_until(lambda: replaced() is not None, 35, interval=0.005):
            note = f"no replacement within 35 s after crash {len(latencies) + 1}"
            break
        ready_at = replaced()
        assert ready_at is not None
        latencies.append(ready_at - t0)
    return {"latency": _sd(latencies), "samples": latencies, "note": note,
            "first": latencies[0] if latencies else None}


def restart_latency(adapters: list[Adapter], settings: Settings, tools_python: str, run_root: Path) -> Result:
    """Crash (SIGKILL) -> replacement ready, ``settings.restarts`` times per tool, plus a bare Popen loop."""
    results: Result = {}
    spec = WorkerSpec("idle", "idle")
    for adapter in adapters:
        def part(adapter: Adapter = adapter) -> Result:
            adapter.start(Stack(workers=(spec,)))
            if not adapter.wait_ready(1, timeout=60):
                return {"error": "worker never became ready"}
            result = _crash_loop(adapter.layout.events_dir, settings.restarts, settings.restart_min_uptime_s)
            if isinstance(adapter, ProcguardAdapter):
                result["status"] = adapter.status()
            return result
        results[adapter.name] = _guarded(adapter, part)
    for adapter in adapters:
        if isinstance(adapter, ProcguardAdapter):
            # The same mechanism without the crash-loop protection: no backoff, no start limit.
            bare = ProcguardAdapter(adapter.tools)
            bare.defaults = {"backoff_initial": '"0s"', "start_limit": "100"}

            def bare_part(bare: ProcguardAdapter = bare) -> Result:
                bare.start(Stack(workers=(spec,)))
                if not bare.wait_ready(1, timeout=60):
                    return {"error": "worker never became ready"}
                return _crash_loop(bare.layout.events_dir, settings.restarts, settings.restart_min_uptime_s)
            results["procguard (no backoff)"] = _guarded(bare, bare_part)
    results["popen-loop"] = _popen_loop(spec, settings, tools_python, run_root)
    return results


def _popen_loop(spec: WorkerSpec, settings: Settings, python: str, run_root: Path) -> Result:
    """The floor: a parent that waits for its child and starts a new one at once."""
    layout = Layout(run_dir=run_root / "popen-loop", python=python)
    _fresh(layout)
    current: list[subprocess.Popen[bytes]] = [procs.popen(layout.argv(spec, spec.name))]

    def respawn(pid: int) -> None:
        current[-1].wait()
        current.append(procs.popen(layout.argv(spec, spec.name)))

    try:
        return _crash_loop(layout.events_dir, settings.restarts, settings.restart_min_uptime_s, respawn)
    finally:
        for proc in current:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        procs.sweep(grace_s=2.0)


def _fresh(layout: Layout) -> None:
    """An empty run dir with an events dir, for workers the harness starts itself."""
    if layout.run_dir.exists():
        shutil.rmtree(layout.run_dir)
    layout.events_dir.mkdir(parents=True)


# -- 3. memory guard --------------------------------------------------------------------------
def memory_guard(adapters: list[Adapter], settings: Settings) -> Result:
    """A worker leaking 20 MB/s against a 200 MB limit, each tool's own mechanism."""
    results: Result = {}
    modes: tuple[GuardMode, ...] = ("tight", "defaults")
    for mode in modes:
        for adapter in adapters:
            def part(adapter: Adapter = adapter, mode: GuardMode = mode) -> Result:
                return _one_leak(adapter, mode, settings)
            runs = [_guarded(adapter, part) for _ in range(settings.reps_for(mode))]
            results[f"{adapter.name}@{mode}"] = _summarize_leaks(runs, settings.guard_budget_s)
    return results


def _one_leak(adapter: Adapter, mode: GuardMode, settings: Settings) -> Result:
    guard = Guard(mode=mode)
    spec = WorkerSpec(guard.programs[0], "leaker", args=(
        "--limit-mb", str(guard.limit_mib), "--delay-max", str(settings.guard_delay_max_s),
        "--step-mb", "2", "--step-s", "0.1", "--cap-mb", "3072", "--stop-s", "0.2"))
    adapter.start(Stack(workers=(spec,), guard=guard))
    if not adapter.wait_ready(1, timeout=60):
        return {"error": "leaker never became ready"}
    events_dir = adapter.layout.events_dir
    pid = adapter.worker_pids()[0]

    def mine(name: str) -> list[Any]:
        return [e for e in read_events(events_dir) if e.pid == pid and e.event == name]

    if not procs.wait_until(lambda: bool(mine("cross")) or not procs.is_alive(pid), 60 + settings.guard_delay_max_s):
        return {"error": "leaker never crossed the limit"}
    crossed = mine("cross")
    if not crossed:
        return {"error": "leaker died before crossing the limit"}
    cross_t = crossed[0].t
    deadline = cross_t + settings.guard_budget_s
    death_t: float | None = None
    while time.monotonic() < deadline:
        if not procs.is_alive(pid):
            death_t = time.monotonic()
            break
        procs.reap()
        time.sleep(0.02)
    rss_values = [float(str(e.data.get("rss", 0))) for e in read_events(events_dir)
                  if e.pid == pid and e.event in ("rss", "signal", "cross")]
    peak = max(rss_values) if rss_values else None
    signals = mine("signal")
    if signals:
        acted_t = signals[0].t
        name = signal.Signals(int(str(signals[0].data.get("signum", 0)))).name
        procs.wait_until(lambda: not procs.is_alive(pid), 30)
        if mine("exit"):
            how = f"graceful ({name} handled)"
        else:
            how = f"{name}, then killed before its handler finished"
    elif death_t is not None:
        acted_t = death_t
        how = "killed (no handler ran)"
    else:
        return {"acted": False, "peak_rss": peak, "how": f"did not act within {settings.guard_budget_s:.0f} s"}
    restarted = procs.wait_until(lambda: any(p != pid for p in adapter.worker_pids()), 15)
    return {"acted": True, "act_s": acted_t - cross_t, "peak_rss": peak, "how": how, "restarted": restarted}


def _summarize_leaks(runs: list[Result], budget_s: float) -> Result:
    acted = [r for r in runs if r.get("acted")]
    errors = [r["error"] for r in runs if "error" in r]
    hows = sorted({str(r.get("how")) for r in runs if "how" in r})
    return {
        "runs": runs,
        "act_s": _sd([r["act_s"] for r in acted]),
        "peak_rss": _sd([r["peak_rss"] for r in runs if r.get("peak_rss")]),
        "acted": len(acted),
        "n": len(runs),
        "how": hows,
        "restarted": all(r.get("restarted") for r in acted) if acted else False,
        "budget_s": budget_s,
        "errors": errors,
    }


def memory_guard_rounds(adapters: list[Adapter], settings: Settings) -> Result:
    """The memory guard again, ``settings.guard_rounds`` times per tool, the tools interleaved.

    Each round runs every (tool, setting) of ``settings.guard_round_tools``
    once, so a slow stretch of the machine hits them alike; the leak starts
    after a random delay each time (the phase against each tool's timer).
    """
    by_name = {adapter.name: adapter for adapter in adapters}
    pairs = [(by_name[tool], mode) for tool, mode in settings.guard_round_tools if tool in by_name]
    runs: dict[str, list[Result]] = {f"{adapter.name}@{mode}": [] for adapter, mode in pairs}
    for round_no in range(settings.guard_rounds):
        for adapter, mode in pairs:
            def part(adapter: Adapter = adapter, mode: GuardMode = mode) -> Result:
                return _one_leak(adapter, mode, settings)
            run = _guarded(adapter, part)
            log.info("memory_guard round %d %s@%s: %s", round_no + 1, adapter.name, mode,
                     f"{run['act_s'] * 1000:.0f} ms" if "act_s" in run else run)
            runs[f"{adapter.name}@{mode}"].append(run)
    return {key: {**_summarize_leaks(values, settings.guard_budget_s), "limit_mib": Guard(mode="defaults").limit_mib}
            for key, values in runs.items()}


# -- 4. orphans -------------------------------------------------------------------------------
def orphans(adapters: list[Adapter], settings: Settings) -> Result:
    """Worker + 4 multiprocessing children: survivors after a normal stop and after SIGKILL of the manager."""
    results: Result = {}
    for action in ("stop", "kill-manager"):
        for adapter in adapters:
            def part(adapter: Adapter = adapter, action: str = action) -> Result:
                adapter.start(Stack(workers=(WorkerSpec("forker", "forker"),)))
                events_dir = adapter.layout.events_dir
                if not procs.wait_until(lambda: len(ready_children(read_events(events_dir))) >= 4
                                        and adapter.worker_pids(), 60):
                    return {"error": "worker or its children never became ready"}
                worker = adapter.worker_pids()[0]
                children = list(ready_children(read_events(events_dir)))
                if action == "stop":
                    adapter.stop_workers()
                else:
                    for root in adapter.manager_roots():
                        procs.signal_pid(root, signal.SIGKILL)
                end = time.monotonic() + settings.orphan_wait_s
                while time.monotonic() < end:  # a fixed observation window, as the peers were measured
                    procs.reap()
                    time.sleep(0.05)
                return {
                    "worker_alive": procs.is_alive(worker),
                    "children_alive": sum(procs.is_alive(pid) for pid in children),
                    "children": len(children),
                }
            results[f"{adapter.name}@{action}"] = _guarded(adapter, part)
    return results


# -- 5. stop time -----------------------------------------------------------------------------
def stop_time(adapters: list[Adapter], settings: Settings) -> Result:
    """Graceful stop of 50 workers that each need 0.5 s."""
    results: Result = {}
    n = settings.stop_workers
    for adapter in adapters:
        runs = []
        for _ in range(settings.stop_reps):
            def part(adapter: Adapter = adapter) -> Result:
                spec = WorkerSpec("slow", "slowstop", args=("--stop-delay", str(settings.stop_delay_s)), count=n)
                adapter.start(Stack(workers=(spec,)))
                if not adapter.wait_ready(n, timeout=180):
                    return {"error": f"only {len(adapter.worker_pids())} of {n} became ready"}
                time.sleep(2.0)  # past every tool's "started" grace (supervisord startsecs=1)
                workers = adapter.worker_pids()
                t0 = time.monotonic()
                result = adapter.stop_workers()
                command_s = time.monotonic() - t0
                procs.wait_until(lambda: not any(procs.is_alive(p) for p in workers), 180)
                all_gone_s = time.monotonic() - t0
                graceful = {e.pid for e in read_events(adapter.layout.events_dir)
                            if e.event == "exit" and e.data.get("graceful")}
                return {"command_s": command_s, "all_gone_s": all_gone_s, "rc": result.returncode,
                        "graceful": len(graceful & set(workers)), "workers": len(workers)}
            runs.append(_guarded(adapter, part))
        ok = [r for r in runs if "error" not in r]
        results[adapter.name] = {
            "runs": runs,
            "command_s": _sd([r["command_s"] for r in ok]),
            "all_gone_s": _sd([r["all_gone_s"] for r in ok]),
            "graceful": min((r["graceful"] for r in ok), default=0),
            "workers": n,
            "errors": [r["error"] for r in runs if "error" in r],
        }
    return results


# -- 6. duplicate storm -----------------------------------------------------------------------
def duplicate_storm(adapters: list[Adapter], settings: Settings, tools_python: str, run_root: Path) -> Result:
    """The dev stack's start command run 10 times in a row; processes and memory afterwards."""
    results: Result = {}
    spec = WorkerSpec("dev", "idle", count=settings.storm_workers)
    stack = Stack(workers=(spec,))
    for adapter in adapters:
        def part(adapter: Adapter = adapter) -> Result:
            adapter.prepare(stack)
            codes = [adapter.start_again().returncode for _ in range(settings.storm_starts)]
            return _storm_count(adapter.layout.events_dir, codes)
        results[adapter.name] = _guarded(adapter, part)
    layout = Layout(run_dir=run_root / "shell", python=tools_python)
    _fresh(layout)
    try:
        for _ in range(settings.storm_starts):
            for name in spec.instance_names():
                subprocess.Popen(layout.argv(spec, name), start_new_session=True,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        results["shell &"] = _storm_count(layout.events_dir, [0] * settings.storm_starts)
    finally:
        procs.sweep(grace_s=2.0)
    return results


def _storm_count(events_dir: Path, codes: list[int]) -> Result:
    """Wait until the set of workers stops changing, then count processes and memory."""
    stable_since, last = time.monotonic(), -1
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        count = len([p for p in ready_workers(read_events(events_dir)) if procs.is_alive(p)])
        if count != last:
            stable_since, last = time.monotonic(), count
        elif time.monotonic() - stable_since >= 3.0:
            break
        procs.reap()
        time.sleep(0.1)
    everything = [p.pid for p in procs.descendants() if procs.is_alive(p.pid)]
    workers = [p for p in ready_workers(read_events(events_dir)) if procs.is_alive(p)]
    others = [pid for pid in everything if pid not in set(workers)]
    return {"processes": len(everything), "workers": len(workers), "rss": procs.rss_of(everything),
            "start_codes": codes, "names": _describe(others)}


# -- 8. real stack ----------------------------------------------------------------------------
def real_stack(adapters: list[Adapter], settings: Settings) -> Result:
    """The manager side's RSS (and CPU) beside 1, 10 and 50 copies of a three-program stack."""
    results: Result = {}
    for size in settings.real_stack.sizes:
        for adapter in adapters:
            if adapter.name not in REAL_STACK_TOOLS:
                continue

            def part(adapter: Adapter = adapter, size: int = size) -> Result:
                return measure(adapter, size, settings.real_stack)
            results[f"{adapter.name}@{size}"] = entry = _guarded(adapter, part)
            log.info("real_stack %s@%d: %s", adapter.name, size,
                     f"{entry['manager_rss'] / 2**20:.1f} MB in {entry['manager_processes']} processes"
                     if "manager_rss" in entry else entry)
    return results


# -- 7. probe latency -------------------------------------------------------------------------
def probe_latency(settings: Settings, tools_python: str, run_root: Path, repo_dir: Path) -> Result:
    """GET latency of a worker's own HTTP endpoint while its main thread is CPU-bound."""
    results: Result = {}
    for server, path in (("procguard", "/health"), ("prometheus_client", "/metrics")):
        for load in ("idle", "cpu"):
            layout = Layout(run_dir=run_root / "probe", python=tools_python)
            results[f"{server}@{load}"] = _probe_one(layout, server, path, load, settings, repo_dir)
    return results


def _probe_one(layout: Layout, server: str, path: str, load: str, settings: Settings, repo_dir: Path) -> Result:
    _fresh(layout)
    argv = [*layout.argv(WorkerSpec("probe", "cpubound"), "probe"),
            "--server", "procguard" if server == "procguard" else "prometheus",
            "--port", str(PROBE_PORT), "--load", load]
    state = layout.run_dir / "state"
    state.mkdir(mode=0o700)
    env = dict(os.environ, PYTHONPATH=str(repo_dir / "src"), PROCGUARD_STATE_DIR=str(state))
    env.pop("PROCGUARD_INSTANCE", None)
    proc = procs.popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        if not procs.wait_until(lambda: bool(ready_workers(read_events(layout.events_dir)))
                                or proc.poll() is not None, 30):
            return {"error": "worker never became ready"}
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace")[-300:] if proc.stderr else ""
            return {"error": f"worker exited {proc.returncode}: {err}"}
        return _probe(PROBE_PORT, path, settings.probe_requests)
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
        procs.sweep(grace_s=2.0)


def _probe(port: int, path: str, requests: int) -> Result:
    """``requests`` sequential GETs on fresh connections (as a kubelet or scraper does)."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    reasons: dict[str, int] = {}
    failures = 0
    warm = time.monotonic() + 10
    while time.monotonic() < warm:  # wait until it answers 200 (a start-up 503 is not latency)
        try:
            if _get(port, path)[0] == 200:
                break
        except OSError:
            pass
        time.sleep(0.05)
    for _ in range(requests):
        t0 = time.perf_counter()
        try:
            status, body = _get(port, path)
        except OSError:
            failures += 1
            continue
        latencies.append(time.perf_counter() - t0)
        statuses[status] = statuses.get(status, 0) + 1
        if status != 200:
            reasons[body[:120]] = reasons.get(body[:120], 0) + 1
        time.sleep(random.uniform(0.0, 0.02))
    if not latencies:
        return {"error": "no request succeeded"}
    return {"p50": percentile(latencies, 50), "p99": percentile(latencies, 99), "max": max(latencies),
            "n": len(latencies), "failures": failures, "statuses": {str(k): v for k, v in statuses.items()}, "non_200": reasons}


def _get(port: int, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        return response.status, body.decode(errors="replace")
    finally:
        conn.close()
