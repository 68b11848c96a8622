"""Render the head-to-head results as markdown and PNG plots.

``render(results)`` is pure: the JSON the harness saved -> the markdown
section (tables, notes, and a list of the scenarios where procguard loses).
``replace_section`` swaps that section into docs/benchmarks.md between the
``<!-- bench:head-to-head -->`` markers and leaves everything else alone.
Plots need matplotlib, which lives in the benchmark's own environment
(bench/.peers/venv), so ``publish`` runs :mod:`.plots` with that Python.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .adapters import ADAPTERS
from .stats import Summary, fmt_bytes, fmt_ratio, fmt_seconds, fmt_summary, ratio

log = logging.getLogger(__name__)

BEGIN = "<!-- bench:head-to-head -->"
END = "<!-- /bench:head-to-head -->"
TOOLS = ("procguard", "supervisord", "circus", "pm2")
LABEL = {"procguard": "procguard", "supervisord": "supervisord", "circus": "circus", "pm2": "PM2"}
IMG_DIR = "img"

#: What each tool's memory guard is, in its own words.
MECHANISM = {
    "procguard": {"defaults": "`memory_limit`, tree sampled every 2 s (0.25 s near the limit), 2 strikes",
                  "tight": "same, regular sampling every 0.5 s"},
    "supervisord": {"defaults": "superlance memmon on TICK_60 (recommended)",
                    "tight": "memmon on TICK_5 (fastest tick)"},
    "circus": {"defaults": "resource_watcher, loop_rate 60 s, max_count 3",
               "tight": "resource_watcher, loop_rate 1 s, max_count 0"},
    "pm2": {"defaults": "max_memory_restart, worker interval 30 s",
            "tight": "max_memory_restart, PM2_WORKER_INTERVAL=1000"},
}

#: Why procguard loses a scenario, and what would fix it. Shown only for
#: scenarios where the figures say it loses.
WHY_LOSE = {
    "footprint": (
        "procguard's supervisor is one Python process that loads more code than supervisord's daemon "
        "(its sampler uses psutil, which alone adds about 4 MB to any Python process; history is SQLite) "
        "and samples every worker's process tree every 2 s by default, plus a ~2 MB shell watchdog that "
        "makes the workers die with the supervisor even when it is SIGKILLed (the orphan scenario). "
        "supervisord samples nothing and has no such guard. What would fix it: import what only some "
        "runs need (status page, history, sampling) on first use, and read /proc directly instead of "
        "through psutil"
    ),
    "restart": (
        "procguard restarts the first crash at once (the Popen floor), then backs off exponentially "
        "(0.5 s, 1 s, 2 s ...) and counts every crash toward its start limit (5 in 60 s), after which the "
        "worker is FATAL until `procguard start NAME`: a crash loop must not burn CPU. PM2 restarts every "
        "crash at once and counts a restart as unstable only when the process lived less than 1 s "
        "(`min_uptime`); supervisord only counts failures to start. With backoff and start limit off (the "
        "'no backoff' row) procguard's restart path is as fast as PM2's. What would fix it: count a crash "
        "toward the start limit and the backoff only when the worker lived less than a minimum uptime, "
        "as PM2 and supervisord do"
    ),
    "memory": (
        "the supervisor samples each worker's process tree every 2 s, and every 0.25 s while the worker is "
        "near its limit (60 % of it, or growing fast enough to reach it before the next 2 s sample); it "
        "recycles on the second consecutive sample over the limit, so that one spike does not restart a "
        "worker, while PM2 and circus at their tightest settings act on the first sample. The recycle is "
        "a SIGTERM and the worker's grace; only the hard ceiling (1.25 x the limit) kills at once. What "
        "would fix it: nothing short of acting on one sample, which we decline (a spike would recycle the "
        "worker)"
    ),
    "stop": (
        "`procguard down` also waits for the supervisor's own exit (history written, locks released), "
        "which adds to the workers' 0.5 s"
    ),
    "storm": (
        "see the process counts: procguard runs one supervisor plus its watchdog"
    ),
    "probe": (
        "the probe answers from a thread of the CPU-bound worker; under the GIL both servers wait for "
        "the interpreter's switch interval"
    ),
    "orphans": (
        "see the table"
    ),
}


def _cell(text: str) -> str:
    """One table cell: no line breaks, no stray column separators."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _label(key: str) -> str:
    tool, _, variant = key.partition("@")
    name = LABEL.get(tool, tool)
    return f"{name} ({variant})" if variant else name


def _summary(data: dict[str, Any] | None) -> Summary | None:
    return Summary.from_dict(data) if data else None


def _median(data: dict[str, Any] | None) -> float | None:
    return float(data["median"]) if data else None


def _err(entry: dict[str, Any] | None) -> str | None:
    if entry is None:
        return "not measured yet"
    if "error" in entry:
        return f"failed: {entry['error']}"
    return None


class Section:
    """Accumulates markdown lines and the list of scenarios procguard loses."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.losses: list[tuple[str, str]] = []

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.add("| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|")
        self.add(*("| " + " | ".join(_cell(c) for c in row) + " |" for row in rows))
        self.add("")

    def lose(self, scenario: str, text: str) -> None:
        self.losses.append((scenario, text))

    headlines: dict[str, tuple[str, str]]

    def headline(self, scenario: str, procguard: str, best_peer: str) -> None:
        """The figure the overview table shows for ``scenario``: procguard's and the best peer's."""
        if not hasattr(self, "headlines"):
            self.headlines = {}
        self.headlines[scenario] = (procguard, best_peer)


def _verdict(pg: float | None, others: Mapping[str, float | None], lower_is_better: bool = True) -> str:
    """``procguard best`` / ``PM2 better (x)`` for a summary column."""
    if pg is None:
        return "not measured"
    known = {k: v for k, v in others.items() if v is not None}
    if not known:
        return "—"
    best_name, best = (min if lower_is_better else max)(known.items(), key=lambda kv: kv[1])
    beats = best < pg if lower_is_better else best > pg
    if beats:
        return f"**loses** to {_label(best_name)}"
    return "best" if all(v != pg for v in known.values()) else "tied best"


# -- scenario renderers ------------------------------------------------------------------------
def _footprint(sec: Section, data: dict[str, Any]) -> None:
    sizes = sorted({int(k.split("@")[1]) for k in data if "@" in k})
    header = ["manager", "processes"]
    for size in sizes:
        header += [f"RSS, {size} worker{'s' if size > 1 else ''}", f"CPU, {size}"]
    header.append(f"RSS ratio to procguard ({sizes[-1] if sizes else '-'})")
    rows = []
    pg = data.get(f"procguard@{sizes[-1]}") if sizes else None
    pg_rss = _median(pg.get("rss")) if pg and "error" not in pg else None
    for tool in TOOLS:
        row = [LABEL[tool]]
        procs_desc = ""
        cells = []
        last_rss = None
        for size in sizes:
            entry = data.get(f"{tool}@{size}")
            problem = _err(entry)
            if problem:
                cells += [problem, ""]
                continue
            assert entry is not None
            procs_desc = ", ".join(entry.get("manager_processes", [])) or procs_desc
            cells += [fmt_summary(_summary(entry["rss"]), "bytes"), f"{entry['cpu_pct']:.2f} %"]
            last_rss = _median(entry["rss"])
        row.append(str(len(procs_desc.split(", "))) if procs_desc else "—")
        row += cells
        row.append(fmt_ratio(ratio(last_rss, pg_rss)))
        rows.append(row)
    sec.table(header, rows)
    parts = []
    for tool in TOOLS:
        entry = data.get(f"{tool}@{sizes[-1]}") if sizes else None
        if entry and len(entry.get("breakdown", [])) > 1:
            parts.append(f"{LABEL[tool]}: " + " + ".join(f"`{name}` {fmt_bytes(rss)}" for name, rss in entry["breakdown"]))
    if parts:
        sec.add("Per process, at the end of the window: " + "; ".join(parts) + ".", "")
    worker = next((e for e in data.values() if isinstance(e, dict) and e.get("worker_rss")), None)
    if worker:
        sec.add(f"Baseline in the same run: one idle worker (a bare Python process) holds "
                f"{fmt_bytes(worker['worker_rss']['median'])} RSS. Manager processes counted: "
                "everything the tool runs that is not a worker (daemon, helpers, watchdogs).", "")
    others = {t: _median(data.get(f"{t}@{sizes[-1]}", {}).get("rss")) for t in TOOLS[1:]
              if sizes and "error" not in data.get(f"{t}@{sizes[-1]}", {"error": 1})}
    verdict = _verdict(pg_rss, others)
    best = min(((v, t) for t, v in others.items() if v is not None), default=None)
    sec.headline("footprint", f"{fmt_bytes(pg_rss)} RSS" if pg_rss else "—",
                 f"{fmt_bytes(best[0])} ({_label(best[1])})" if best else "—")
    if verdict.startswith("**loses"):
        sec.lose("footprint", f"manager RSS with {sizes[-1]} workers: {fmt_bytes(pg_rss or 0)}, {verdict[2:].replace('**', '')}")


def _restart(sec: Section, data: dict[str, Any]) -> None:
    rows = []
    pg = data.get("procguard") or {}
    pg_med = _median(pg.get("latency")) if "error" not in pg else None
    for key in (*TOOLS, "procguard (no backoff)", "popen-loop"):
        entry = data.get(key)
        name = {"popen-loop": "baseline: bare `Popen` loop", "procguard (no backoff)":
                "procguard, backoff and start limit off"}.get(key, LABEL.get(key, key))
        problem = _err(entry)
        if problem:
            rows.append([name, problem, "", "", ""])
            continue
        assert entry is not None
        n = len(entry.get("samples", []))
        note = entry.get("note") or ""
        if key == "procguard" and entry.get("status"):
            states = ", ".join(f"{w.get('state')}" for w in entry["status"])
            note = (note + "; " if note else "") + f"state afterwards: {states}"
        first = entry.get("first")
        rows.append([name, fmt_seconds(first) if first is not None else "—",
                     fmt_summary(_summary(entry.get("latency")), "s") + f" (n={n})",
                     fmt_ratio(ratio(_median(entry.get("latency")), pg_med)), note])
    sec.table(["manager", "first crash", "median (min-max) over crashes", "ratio to procguard", "note"], rows)
    others = {t: _median((data.get(t) or {}).get("latency")) for t in TOOLS[1:]}
    verdict = _verdict(pg_med, others)
    best = min(((v, t) for t, v in others.items() if v is not None), default=None)
    first = pg.get("first")
    sec.headline("restart", (f"{fmt_seconds(pg_med)} median, {fmt_seconds(first)} first crash"
                             if pg_med is not None and first is not None else "—"),
                 f"{fmt_seconds(best[0])} ({_label(best[1])})" if best else "—")
    if verdict.startswith("**loses"):
        sec.lose("restart", f"median restart latency {fmt_seconds(pg_med or 0)}, {verdict[2:].replace('**', '')}")


def _memory(sec: Section, data: dict[str, Any]) -> None:
    rows = []
    peers_all_graceful = True
    budget = next((e.get("budget_s") for e in data.values() if isinstance(e, dict) and e.get("budget_s")), None)
    best: dict[str, float | None] = {}
    for mode in ("defaults", "tight"):
        for tool in TOOLS:
            entry = data.get(f"{tool}@{mode}")
            mech = MECHANISM[tool][mode]
            problem = _err(entry)
            if problem:
                rows.append([LABEL[tool], mech, problem, "", "", ""])
                continue
            assert entry is not None
            acted, n = entry.get("acted", 0), entry.get("n", 0)
            act = fmt_summary(_summary(entry.get("act_s")), "s") if acted else "—"
            if acted < n:
                act = (act + f"; did not act within {budget:.0f} s in {n - acted} of {n}") if acted else \
                    f"did not act within {budget:.0f} s"
            how = "; ".join(entry.get("how", [])) or "—"
            if entry.get("errors"):
                how += " (errors: " + "; ".join(entry["errors"])[:120] + ")"
            restarted = "yes" if entry.get("restarted") else "no"
            rows.append([LABEL[tool], mech, act + (f" (n={n})" if n > 1 else ""),
                         fmt_summary(_summary(entry.get("peak_rss")), "bytes"), how, restarted])
            best[f"{tool}@{mode}"] = _median(entry.get("act_s")) if acted == n and acted else None
            killed = sum(1 for r in entry.get("runs", []) if "killed" in str(r.get("how", "")))
            if tool == "procguard" and killed:
                sec.lose("memory", f"at {mode}, procguard ended the worker with SIGKILL (its handler did not run "
                         f"or did not finish) in {killed} of {n} runs")
            elif tool != "procguard" and killed:
                peers_all_graceful = False
    sec.table(["manager", "mechanism", "acted after crossing", "peak RSS", "how it stopped the worker",
               "restarted"], rows)
    note = ("circus at its defaults acts only after more than `max_count` (3) consecutive over-limit checks "
            "60 s apart, so never sooner than 180 s after the crossing; the budget above ends the wait "
            "earlier on purpose. The leaking worker's handler takes 0.2 s to finish its in-flight work; "
            "'graceful' means it finished.")
    if peers_all_graceful:
        note += (" Every peer that acted stopped the worker with its ordinary stop signal and waited "
                 "(PM2: SIGINT), so they are slow but graceful.")
    sec.add(note, "")
    heads = []
    for mode in ("defaults", "tight"):
        pg = best.get(f"procguard@{mode}")
        others = {t: best.get(f"{t}@{mode}") for t in TOOLS[1:]}
        top = min(((v, t) for t, v in others.items() if v is not None), default=None)
        heads.append((mode, pg, top))
        verdict = _verdict(pg, others)
        if verdict.startswith("**loses"):
            sec.lose("memory", f"time to act at {mode} {fmt_seconds(pg or 0)}, {verdict[2:].replace('**', '')}")
    sec.headline("memory", "; ".join(f"{fmt_seconds(pg) if pg is not None else '—'} ({mode})"
                                     for mode, pg, _ in heads),
                 "; ".join(f"{fmt_seconds(top[0])} ({_label(top[1])}, {mode})" if top else f"— ({mode})"
                           for mode, _, top in heads))


def _orphans(sec: Section, data: dict[str, Any]) -> None:
    rows = []
    for tool in TOOLS:
        row = [LABEL[tool]]
        for action in ("stop", "kill-manager"):
            entry = data.get(f"{tool}@{action}")
            problem = _err(entry)
            if problem:
                row.append(problem)
                continue
            assert entry is not None
            worker = "worker + " if entry["worker_alive"] else ""
            row.append(f"{worker}{entry['children_alive']} of {entry['children']} children")
        rows.append(row)
    sec.table(["manager", "survivors after the normal stop", "survivors after SIGKILL of the manager"], rows)

    def survivors(tool: str) -> int | None:
        total = 0
        for action in ("stop", "kill-manager"):
            entry = data.get(f"{tool}@{action}")
            if not entry or "error" in entry:
                return None
            total += entry["children_alive"] + int(entry["worker_alive"])
        return total

    others = {t: survivors(t) for t in TOOLS[1:]}
    verdict = _verdict(survivors("procguard"), others)
    best = min(((v, t) for t, v in others.items() if v is not None), default=None)
    pg_s = survivors("procguard")
    sec.headline("orphans", f"{pg_s} survivors (both cases)" if pg_s is not None else "—",
                 f"{best[0]} survivors ({_label(best[1])})" if best else "—")
    if verdict.startswith("**loses"):
        sec.lose("orphans", f"{survivors('procguard')} survivors, {verdict[2:].replace('**', '')}")


def _stop(sec: Section, data: dict[str, Any]) -> None:
    rows = []
    pg = data.get("procguard") or {}
    pg_gone = _median(pg.get("all_gone_s"))
    for tool in TOOLS:
        entry = data.get(tool)
        problem = _err(entry)
        if problem or not entry or not entry.get("all_gone_s"):
            rows.append([LABEL[tool], "", problem or "failed: " + "; ".join((entry or {}).get("errors", [])),
                         "", "", ""])
            continue
        rows.append([LABEL[tool], f"`{ADAPTERS[tool].stop_command}`",
                     fmt_summary(_summary(entry["command_s"]), "s"),
                     fmt_summary(_summary(entry["all_gone_s"]), "s"),
                     f"{entry['graceful']} of {entry['workers']}",
                     fmt_ratio(ratio(_median(entry["all_gone_s"]), pg_gone))])
    sec.table(["manager", "stop command", "command returned after", "all workers gone after",
               "stopped gracefully", "ratio to procguard"], rows)
    others = {t: _median((data.get(t) or {}).get("all_gone_s")) for t in TOOLS[1:]}
    verdict = _verdict(pg_gone, others)
    best = min(((v, t) for t, v in others.items() if v is not None), default=None)
    sec.headline("stop", fmt_seconds(pg_gone) if pg_gone is not None else "—",
                 f"{fmt_seconds(best[0])} ({_label(best[1])})" if best else "—")
    if verdict.startswith("**loses"):
        sec.lose("stop", f"all 50 workers gone after {fmt_seconds(pg_gone or 0)}, {verdict[2:].replace('**', '')}")


def _storm(sec: Section, data: dict[str, Any]) -> None:
    rows = []
    for key in (*TOOLS, "shell &"):
        entry = data.get(key)
        name = "baseline: `python worker.py &` per worker" if key == "shell &" else LABEL[key]
        problem = _err(entry)
        if problem:
            rows.append([name, problem, "", "", "", ""])
            continue
        assert entry is not None
        codes = entry.get("start_codes", [])
        summary = ", ".join(f"{codes.count(c)}x exit {c}" for c in sorted(set(codes)))
        rows.append([name, summary, str(entry["processes"]), str(entry["workers"]), fmt_bytes(entry["rss"]),
                     ", ".join(entry.get("names", [])[:3]) if key != "shell &" else ""])
    sec.table(["manager", "the 10 start commands", "processes afterwards", "workers running", "their memory (RSS)",
               "non-worker processes"], rows)
    pg = data.get("procguard")
    pg_workers = pg["workers"] if pg and "error" not in pg else None
    others = {t: (data[t]["workers"] if t in data and "error" not in data[t] else None) for t in TOOLS[1:]}
    verdict = _verdict(pg_workers, others)
    pg_procs = pg["processes"] if pg and "error" not in pg else None
    best = min(((data[t]["processes"], t) for t in TOOLS[1:] if t in data and "error" not in data[t]), default=None)
    sec.headline("storm", f"{pg_procs} processes, {pg_workers} workers" if pg_procs is not None else "—",
                 f"{best[0]} processes ({_label(best[1])})" if best else "—")
    if verdict.startswith("**loses"):
        sec.lose("storm", f"{pg_workers} workers after the storm, {verdict[2:].replace('**', '')}")


def _probe(sec: Section, data: dict[str, Any]) -> None:
    rows = []
    for server, label in (("procguard", "procguard `/health`"), ("prometheus_client", "prometheus_client `start_http_server`")):
        for load in ("idle", "cpu"):
            entry = data.get(f"{server}@{load}")
            problem = _err(entry)
            name = f"{label}, worker {'CPU-bound' if load == 'cpu' else 'idle'}"
            if problem:
                rows.append([name, problem, "", "", ""])
                continue
            assert entry is not None
            other = {k: v for k, v in entry.get("statuses", {}).items() if k != "200"}
            rows.append([name, fmt_seconds(entry["p50"]), fmt_seconds(entry["p99"]), fmt_seconds(entry["max"]),
                         f"{entry['n']} ({', '.join(f'{v}x {k}' for k, v in other.items()) or 'all 200'})"])
    sec.table(["endpoint", "p50", "p99", "max", "requests"], rows)
    pg, prom = data.get("procguard@cpu"), data.get("prometheus_client@cpu")
    if pg and prom and "error" not in pg and "error" not in prom:
        sec.add(f"Under CPU load, prometheus_client's p99 is {fmt_ratio(ratio(prom['p99'], pg['p99']))} "
                "procguard's. supervisord, circus and PM2 have no per-worker health endpoint: "
                "supervisord's XML-RPC and `pm2 jlist` report the process state their daemon "
                "holds, not whether the worker's own loop is alive.", "")
        sec.headline("probe", f"p99 {fmt_seconds(pg['p99'])}", f"p99 {fmt_seconds(prom['p99'])} (prometheus_client)")
        if prom["p99"] < pg["p99"]:
            sec.lose("probe", f"p99 {fmt_seconds(pg['p99'])} vs prometheus_client {fmt_seconds(prom['p99'])}")


SCENARIOS: list[tuple[str, str, str, Callable[[Section, dict[str, Any]], None]]] = [
    ("footprint", "1. Footprint: the manager's own RSS and CPU",
     "Idle workers; RSS of every manager process summed, sampled every second over the window (median "
     "and range), CPU averaged over it (the kernel counts CPU time in 10 ms ticks, so figures under "
     "~0.05 % are at the resolution limit). procguard runs with its default resource sampling on. "
     "supervisord runs with the control socket and RPC interface `supervisorctl` needs, in the "
     "foreground (`supervisord -n`, as its systemd units and container images run it): a daemonizing "
     "start forks, and a forked process's RSS leaves out the interpreter's file-backed pages (python "
     "binary, shared libraries) until it touches them again, so the same supervisord with 50 workers "
     "shows about 6 MB less RSS daemonized (19.4 vs 25.3 MB) with identical private memory (14.6 MB). "
     "procguard's `up --detach` execs a fresh interpreter, measured like the foreground supervisord. "
     "circusd `--daemon` forks too, so its figure is low by the same effect.",
     _footprint),
    ("restart", "2. Restart latency: crash (SIGKILL) to replacement running",
     "The worker is SIGKILLed once it has run 1.5 s; latency ends when the replacement logs that it is "
     "running (so Python's own start-up is included: the bare Popen loop is the floor).", _restart),
    ("memory", "3. Memory guard: a worker leaking 20 MB/s against a 200 MB limit",
     "Each tool's own documented mechanism, at its defaults and at its tightest setting. The leak starts "
     "after a random 0-5 s delay; 'acted after crossing' runs from the worker's first RSS reading above "
     "200 MB to the signal it received (or its death when no handler ran). Defaults-mode runs stop "
     "waiting after the budget: 'did not act within N s' is a measured outcome, not an extrapolation.",
     _memory),
    ("orphans", "4. Orphans: a worker with 4 multiprocessing children (daemon=True)",
     "Counted 3 s after the tool's normal stop, and after SIGKILL of the manager process itself.", _orphans),
    ("stop", "5. Stop time: 50 workers that each need 0.5 s to stop",
     "From issuing the tool's stop command until the command returned and until every worker had exited; "
     "'gracefully' counts workers whose signal handler ran to completion.", _stop),
    ("storm", "6. Duplicate storm: the dev stack (3 workers) started 10 times in a row",
     "The tool's ordinary start command run 10 times; then every process left (manager and workers) "
     "and their memory.", _storm),
    ("probe", "7. Probe latency under a CPU-bound worker",
     "Sequential GETs, each on a new connection (as a kubelet probes), against the worker's own "
     "endpoint while its main thread runs pure-Python arithmetic.", _probe),
]

PLOTS = {"footprint", "restart", "memory", "stop", "storm", "probe"}


def render(results: dict[str, Any]) -> str:
    """The whole markdown section (markers included) for ``results``."""
    sec = Section()
    machine, versions = results.get("machine", {}), results.get("versions", {})
    scen = results.get("scenarios", {})
    quick = any(v.get("quick") for v in scen.values())
    sec.add(BEGIN, "## Head to head: procguard, supervisord, circus and PM2", "")
    sec.add(
        "Same machine, same run, same workers (`bench/head_to_head/workers/`), one manager at a time. "
        f"Measured {machine.get('date', '?')} on {machine.get('cpus', '?')} CPUs, "
        f"{machine.get('memory_gib', '?')} GiB, Linux {machine.get('kernel', '?')}, Python "
        f"{machine.get('python', '?')}; " + ", ".join(versions.get(t, f"{t} ?") for t in TOOLS) + ". "
        "Figures are medians with (min-max) over repetitions; a ratio is the peer's figure divided by "
        "procguard's (above 1x: procguard is lower). Reproduce with `make bench-peers` (installs the "
        "peers into `bench/.peers/` by package name, then runs `python -m bench.head_to_head`; "
        "`--quick`, `--only SCENARIO[,SCENARIO...]`). The real stack and the memory guard run after run "
        "(scenarios 8 and 9) have their own section below.", "")
    if quick:
        sec.add("**These figures come from a `--quick` run** (fewer repetitions, shorter windows).", "")
    summary_at = len(sec.lines)
    for key, title, method, renderer in SCENARIOS:
        sec.add(f"### {title}", "", method, "")
        entry = scen.get(key)
        if entry is None:
            sec.add("Not measured yet.", "")
            continue
        renderer(sec, entry["data"])
        if key in PLOTS:
            sec.add(f"![{key}]({IMG_DIR}/h2h-{key}.png)", "")
    sec.add("### Where procguard loses", "")
    if sec.losses:
        grouped: dict[str, list[str]] = {}
        for scenario, text in sec.losses:
            grouped.setdefault(scenario, []).append(text)
        for scenario, texts in grouped.items():
            sec.add(f"- **{scenario}**: {'; '.join(texts)}. Why: {WHY_LOSE.get(scenario, 'see the table above')}.")
    else:
        sec.add("- In none of the measured scenarios.")
    sec.add("", END)
    lost = {s for s, _ in sec.losses}
    heads = getattr(sec, "headlines", {})
    overview = ["| scenario | procguard | best peer | verdict for procguard |", "|---|---|---|---|"]
    for key, title, _, _ in SCENARIOS:
        pg_text, peer_text = heads.get(key, ("—", "—"))
        state = "not measured yet" if key not in scen else ("**loses** (see below)" if key in lost else "best or tied")
        overview.append(f"| {title.split(':')[0]} | {pg_text} | {peer_text} | {state} |")
    sec.lines[summary_at:summary_at] = [*overview, ""]
    return "\n".join(sec.lines) + "\n"


def replace_section(document: str, section: str, begin: str = BEGIN, end_marker: str = END,
                    after: str | None = None) -> str:
    """``document`` with the section between ``begin`` and ``end_marker`` replaced by ``section``.

    An absent section goes right after the ``after`` marker when the document
    has it, else at the end.
    """
    start, end = document.find(begin), document.find(end_marker)
    if start != -1 and end != -1 and end > start:
        return document[:start] + section.rstrip("\n") + document[end + len(end_marker):]
    anchor = document.find(after) if after else -1
    if anchor != -1:
        cut = anchor + len(after or "")
        return document[:cut] + "\n\n" + section.rstrip("\n") + document[cut:]
    if document and not document.endswith("\n"):
        document += "\n"
    return document + ("\n" if document else "") + section


def publish(results: dict[str, Any], repo: Path, peers: Path) -> None:
    """Write the sections whose scenarios ``results`` holds into docs/benchmarks.md, the plots into docs/img/.

    A section none of whose scenarios were measured is left as it is, so a
    ``--only`` run on a checkout without earlier results does not blank the
    figures published before.
    """
    from . import report_real

    doc = repo / "docs" / "benchmarks.md"
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    measured = set(results.get("scenarios", {}))
    if measured & {key for key, _, _, _ in SCENARIOS}:
        text = replace_section(text, render(results))
    if measured & set(report_real.KEYS):
        text = replace_section(text, report_real.render(results), report_real.BEGIN, report_real.END, after=END)
    doc.write_text(text)
    log.info("wrote %s", doc)
    python = peers / "venv" / "bin" / "python"
    if not python.exists():
        log.warning("no matplotlib environment at %s: plots skipped", python)
        return
    img = repo / "docs" / IMG_DIR
    img.mkdir(parents=True, exist_ok=True)
    results_file = repo / "bench" / "results" / "head_to_head.json"
    proc = subprocess.run([str(python), str(Path(__file__).with_name("plots.py")), str(results_file), str(img)],
                          capture_output=True, text=True, check=False, timeout=300)
    if proc.returncode != 0:
        log.warning("plots failed: %s", proc.stderr[-500:])
    else:
        log.info("plots written to %s", img)
