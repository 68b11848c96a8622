"""The markdown of the "real stack" and "memory guard rounds" scenarios (their own section).

``render(results)`` is pure: the saved JSON -> the section between the
``<!-- bench:real-stack -->`` markers of docs/benchmarks.md. It has its own
markers so that ``--only real_stack,memory_guard`` on a checkout without the
other scenarios' saved results rewrites these figures and leaves the rest of
the head-to-head section as it was. Verdicts and the "why" are read from the
figures (the heaviest manager-side processes), so a re-run after a change
says what is true then.
"""

from __future__ import annotations

from typing import Any

from .adapters.pm2 import WORKER_INTERVAL_MS
from .adapters.supervisord import TICKS
from .report import LABEL, Section
from .stats import Summary, fmt_bytes, fmt_ratio, fmt_seconds, ratio

BEGIN = "<!-- bench:real-stack -->"
END = "<!-- /bench:real-stack -->"

#: The scenarios this section shows (keys of the results' ``scenarios``).
KEYS = ("real_stack", "memory_guard")
TOOLS = ("procguard", "supervisord", "pm2")

#: The issue's goals, quoted in the verdicts.
GUARD_GOAL_S = 0.100
PEAK_GOAL = 1.02

MIB = 1024 * 1024


def _stamp(entry: dict[str, Any]) -> str:
    commit = entry.get("commit") or "unknown commit"
    quick = " (a `--quick` run: fewer sizes, samples and rounds)" if entry.get("quick") else ""
    return f"measured {entry.get('date', '?')} on commit `{commit}`{quick}"


def _mechanism(key: str) -> str:
    tool, _, mode = key.partition("@")
    if tool == "procguard":
        return "`memory_limit`, supervisor at its defaults" if mode == "defaults" else "`memory_limit`, tight tuning"
    if tool == "pm2":
        interval = WORKER_INTERVAL_MS.get(mode)
        return f"`max_memory_restart`, PM2_WORKER_INTERVAL={interval}" if interval else \
            "`max_memory_restart`, worker interval 30 s (default)"
    if tool == "supervisord":
        return f"superlance memmon on {TICKS.get(mode, '?')}"
    return mode


# -- real stack ---------------------------------------------------------------------------------
def _real_stack(sec: Section, data: dict[str, Any]) -> None:
    sizes = sorted({int(k.split("@")[1]) for k in data if "@" in k})
    header = ["manager"] + [f"{s} cop{'y' if s == 1 else 'ies'}: RSS (processes)" for s in sizes]
    header += [f"CPU, {sizes[-1]} copies", f"ratio to supervisord, {sizes[-1]} copies"]
    rows = []
    sd_last = (data.get(f"supervisord@{sizes[-1]}") or {}).get("manager_rss") if sizes else None
    for tool in TOOLS:
        row = [LABEL[tool]]
        for size in sizes:
            entry = data.get(f"{tool}@{size}")
            if not entry:
                row.append("not measured")
            elif "error" in entry:
                row.append(f"failed: {entry['error']}")
            else:
                lo, hi = entry["manager_rss_range"]
                spread = f", {fmt_bytes(lo)}-{fmt_bytes(hi)}" if fmt_bytes(lo) != fmt_bytes(hi) else ""
                row.append(f"{fmt_bytes(entry['manager_rss'])} ({entry['manager_processes']}{spread})")
        last = (data.get(f"{tool}@{sizes[-1]}") if sizes else None) or {"error": "not measured"}
        ok = "error" not in last
        row.append(f"{last['cpu_pct']:.2f} %" if ok and last.get("cpu_pct") is not None else "—")
        row.append(fmt_ratio(ratio(last["manager_rss"], sd_last)) if ok and sd_last else "—")
        rows.append(row)
    sec.table(header, rows)
    windows = [e["window_s"] for e in data.values() if "window_s" in e]
    if windows:
        sec.add(f"Sampling window: {min(windows):.0f} s per run (memmon checks once a minute at TICK_60, PM2 "
                "every 30 s at its defaults: a window under a minute can miss their periodic work).", "")

    if sizes:
        parts = []
        for tool in TOOLS:
            entry = data.get(f"{tool}@{sizes[-1]}")
            if entry and "error" not in entry:
                parts.append(f"{LABEL[tool]}: " + " + ".join(
                    f"`{name}`" + (f" x{count}" if count > 1 else "") + f" {fmt_bytes(rss)}"
                    for name, count, rss in entry["breakdown"]))
        sec.add(f"Manager-side processes with {sizes[-1]} copies: " + "; ".join(parts) + ".", "")

    programs = ("http", "job", "cmd")
    wrows = []
    for tool in TOOLS:
        entry = data.get(f"{tool}@{sizes[-1]}") if sizes else None
        if not entry or "error" in entry:
            continue
        each = entry.get("worker_rss_each", {})
        counts = entry.get("workers", {})
        total = entry["manager_rss"] + sum(each.get(p, 0) * counts.get(p, 0) for p in programs)
        wrows.append([LABEL[tool], *(fmt_bytes(each[p]) if p in each else "—" for p in programs),
                      fmt_bytes(total)])
    if wrows:
        sec.add(f"The programs themselves (RSS of one copy, median), and everything together with {sizes[-1]} "
                "copies (manager side + every program):", "")
        sec.table(["manager", "HTTP service", "periodic job", "plain command", "total, manager and programs"],
                  wrows)
        pg = (data.get(f"procguard@{sizes[-1]}") or {}).get("worker_rss_each", {}).get("job")
        peer = (data.get(f"supervisord@{sizes[-1]}") or {}).get("worker_rss_each", {}).get("job")
        if pg and peer and pg > peer:
            sec.add(f"The periodic job's process under procguard is a function worker: procguard's runner "
                    f"runs inside it, so it holds {fmt_bytes(pg - peer)} more than the same loop run as a "
                    "program under the peers. By the rule above that process counts as the worker, not as "
                    "procguard's; the last column counts everything.", "")

    checks = []
    for key in sorted(data, key=lambda k: (int(k.split("@")[1]), k)):
        entry = data[key]
        if "error" in entry:
            continue
        ok, n = entry.get("http_answered", [0, 0])
        if ok != n:
            checks.append(f"{_label_key(key)}: {ok} of {n} HTTP services answered")
        if "health_answered" in entry:
            ok, n = entry["health_answered"]
            if ok != n:
                checks.append(f"{_label_key(key)}: {ok} of {n} health ports answered /health")
    sec.add("Checked after the samples: " + ("; ".join(checks) if checks else
            "every HTTP service answered `GET /` with 200 under every manager, and procguard answered "
            "`/health` with 200 on every health port it serves") + ".", "")

    lost = []
    for size in sizes:
        pg, sd = data.get(f"procguard@{size}"), data.get(f"supervisord@{size}")
        if not pg or not sd or "error" in pg or "error" in sd:
            continue
        if pg["manager_rss"] > sd["manager_rss"]:
            lost.append((size, pg, sd))
    met = [s for s in sizes if s not in {size for size, _, _ in lost}]
    copies = f"{', '.join(str(s) for s in met)} cop{'y' if met == [1] else 'ies'}"
    if not lost:
        verdict = f"Met at every measured size ({copies})."
    else:
        verdict = (f"Met at {copies}. " if met else "") + "Not met at " + ", ".join(
            f"{size} ({fmt_bytes(pg['manager_rss'])} against {fmt_bytes(sd['manager_rss'])})"
            for size, pg, sd in lost) + "."
    sec.add("**Goal: procguard's manager side uses no more RSS than supervisord's (with memmon) at every size.** "
            + verdict, "")
    for size, pg, _ in lost:
        heavy = pg["breakdown"][0]
        sec.lose("real stack", f"{size} copies: {fmt_bytes(pg['manager_rss'])} against supervisord's "
                 f"{fmt_bytes(_sd_rss(data, size))}; the heaviest part is `{heavy[0]}`"
                 + (f" x{heavy[1]}" if heavy[1] > 1 else "") + f" ({fmt_bytes(heavy[2])})")
    if sizes:
        pg = data.get(f"procguard@{sizes[-1]}") or {}
        sd = data.get(f"supervisord@{sizes[-1]}") or {}
        sec.headline("real_stack", f"{fmt_bytes(pg['manager_rss'])} ({sizes[-1]} copies)" if "manager_rss" in pg
                     else "—", f"{fmt_bytes(sd['manager_rss'])} (supervisord + memmon, {sizes[-1]} copies)"
                     if "manager_rss" in sd else "—")


def _sd_rss(data: dict[str, Any], size: int) -> float:
    return float((data.get(f"supervisord@{size}") or {}).get("manager_rss", 0))


def _label_key(key: str) -> str:
    tool, _, size = key.partition("@")
    return f"{LABEL.get(tool, tool)} at {size}"


# -- memory guard rounds ------------------------------------------------------------------------
def _memory_guard(sec: Section, data: dict[str, Any]) -> None:
    rows = []
    for key, entry in data.items():
        tool = key.split("@")[0]
        if "act_s" not in entry:
            rows.append([LABEL.get(tool, tool), _mechanism(key), f"failed: {entry.get('error', '?')}",
                         "", "", "", "", ""])
            continue
        limit = float(entry.get("limit_mib", 200)) * MIB
        act = entry.get("act_s")
        peak = entry.get("peak_rss")
        graceful = sum(1 for r in entry.get("runs", []) if str(r.get("how", "")).startswith("graceful"))
        acted, n = entry.get("acted", 0), entry.get("n", 0)
        act_sum = Summary.from_dict(act) if act else None
        peak_sum = Summary.from_dict(peak) if peak else None
        errors = entry.get("errors", [])
        rows.append([
            LABEL.get(tool, tool), _mechanism(key), f"{acted} of {n}" + (f" ({len(errors)} failed)" if errors else ""),
            fmt_seconds(act_sum.median) if act_sum else "—",
            fmt_seconds(act_sum.high) if act_sum else "—",
            fmt_seconds(act_sum.low) if act_sum else "—",
            (f"{fmt_bytes(peak_sum.median)}, worst {fmt_bytes(peak_sum.high)} "
             f"({peak_sum.high / limit:.3f}x the limit)") if peak_sum else "—",
            f"{graceful} of {n}",
        ])
    sec.table(["manager", "setting", "acted", "detection after crossing: median", "worst", "best",
               "peak RSS: median, worst", "stopped gracefully"], rows)
    pg = data.get("procguard@defaults") or {}
    pg_act = pg.get("act_s")
    peers = {k: v.get("act_s") for k, v in data.items() if not k.startswith("procguard") and v.get("act_s")}
    if pg_act:
        limit = float(pg.get("limit_mib", 200)) * MIB
        worst_peak = (pg.get("peak_rss") or {}).get("high", 0) / limit
        sec.add(f"**Goal for procguard at its defaults: detection <= {GUARD_GOAL_S * 1000:.0f} ms after crossing, "
                f"peak <= {PEAK_GOAL:.2f}x the limit, graceful.** Measured: median "
                f"{fmt_seconds(pg_act['median'])}, worst {fmt_seconds(pg_act['high'])}, worst peak "
                f"{worst_peak:.3f}x: " + ("met." if pg_act["high"] <= GUARD_GOAL_S and worst_peak <= PEAK_GOAL
                                          else "not met."), "")
        for key, act in peers.items():
            if act["median"] < pg_act["median"]:
                sec.lose("memory guard", f"median detection {fmt_seconds(pg_act['median'])} at defaults against "
                         f"{LABEL.get(key.split('@')[0])} ({_mechanism(key)}) {fmt_seconds(act['median'])}")
        killed = sum(1 for r in pg.get("runs", []) if "killed" in str(r.get("how", "")))
        if killed:
            sec.lose("memory guard", f"procguard ended the worker with SIGKILL in {killed} of {pg.get('n')} runs")
        best = min(peers.items(), key=lambda kv: kv[1]["median"], default=None)
        sec.headline("memory_guard", f"{fmt_seconds(pg_act['median'])} median, {fmt_seconds(pg_act['high'])} worst",
                     f"{fmt_seconds(best[1]['median'])} median, {fmt_seconds(best[1]['high'])} worst "
                     f"({LABEL.get(best[0].split('@')[0])}, {_mechanism(best[0])})" if best else "—")


SCENARIOS = [
    ("real_stack", "8. Real stack: the managers' own processes beside an HTTP service, a periodic job and a command",
     "1, 10 and 50 copies of three programs, each under a 200 MB memory limit enforced the tool's usual way: "
     "a small HTTP service on its own port (procguard also serves a health port for it, `health_port`), a "
     "periodic job (under procguard a function worker, `run = \"ticker:tick\"` with `interval = \"1s\"`; "
     "under the peers the same loop as a program) and an idle plain command. procguard runs `procguard up` "
     "at its defaults; supervisord runs in the foreground with superlance's memmon (`-p`/`-g` per program, "
     "TICK_60 as recommended); PM2 uses `max_memory_restart` at its defaults. Once every program is ready and "
     "the stack has settled, the RSS of every process the tool runs that is not a program is summed, sampled "
     "every second over a window (median, with the range when it moved; the window is given below). A process that logged itself ready is a program: a "
     "function worker's process is the worker, while a `procguard run` wrapping a command, a watchdog, memmon "
     "or PM2's daemon is the manager's. CPU: the manager side's time on CPU over the sampling window, in the "
     "scheduler's nanoseconds (/proc/PID/task/TID/schedstat), not clock ticks.", _real_stack),
    ("memory_guard", "9. Memory guard beside PM2's tightest setting: repeated runs with a random phase",
     "The memory scenario's worker (20 MB/s against a 200 MB limit, in 2 MB steps every 0.1 s, its stop "
     "handler needs 0.2 s) run many times, the tools interleaved round by round; the leak starts after a "
     "random 0-5 s delay, so it crosses at a random point of each tool's timer. Detection runs from the "
     "worker's own first RSS record above the limit to the moment its handler saw the stop signal (or it "
     "died, if no handler ran); peak is the highest RSS the worker recorded. procguard runs at its defaults; "
     "PM2 at its tightest polling (`PM2_WORKER_INTERVAL=1000`; 30 s by default); supervisord with memmon on "
     "TICK_5, its fastest tick.", _memory_guard),
]


def render(results: dict[str, Any]) -> str:
    """The section (markers included) for the scenarios in ``KEYS`` of ``results``."""
    sec = Section()
    scen = results.get("scenarios", {})
    machine, versions = results.get("machine", {}), results.get("versions", {})
    sec.add(BEGIN, "## Head to head: a real stack, and the memory guard run after run", "")
    sec.add(f"Same harness, workers and machine as above ({machine.get('cpus', '?')} CPUs, "
            f"{machine.get('memory_gib', '?')} GiB, Linux {machine.get('kernel', '?')}, Python "
            f"{machine.get('python', '?')}; " + ", ".join(versions.get(t, f"{t} ?") for t in TOOLS) + "). "
            "Reproduce with `python -m bench.head_to_head --only real_stack,memory_guard` (after "
            "`python -m bench.head_to_head.install`; add `--quick` for a smoke run).", "")
    summary_at = len(sec.lines)
    for key, title, method, renderer in SCENARIOS:
        sec.add(f"### {title}", "")
        entry = scen.get(key)
        if entry is None:
            sec.add(method, "", "Not measured yet.", "")
            continue
        sec.add(f"{method} Figures {_stamp(entry)}.", "")
        renderer(sec, entry["data"])
    sec.add("### Where procguard loses here", "")
    if sec.losses:
        grouped: dict[str, list[str]] = {}
        for scenario, text in sec.losses:
            grouped.setdefault(scenario, []).append(text)
        sec.add(*(f"- **{scenario}**: {'; '.join(texts)}." for scenario, texts in grouped.items()))
    else:
        sec.add("- In none of these measured scenarios.")
    sec.add("", END)
    heads = getattr(sec, "headlines", {})
    overview = ["| scenario | procguard | reference: supervisord (real stack), the fastest peer (guard) "
                "| verdict for procguard |", "|---|---|---|---|"]
    lost = {s.replace(" ", "_") for s, _ in sec.losses}
    for key, title, _, _ in SCENARIOS:
        pg_text, ref = heads.get(key, ("—", "—"))
        state = "not measured yet" if key not in scen else ("**loses** (see below)" if key in lost else "best or tied")
        overview.append(f"| {title.split(':')[0]} | {pg_text} | {ref} | {state} |")
    sec.lines[summary_at:summary_at] = [*overview, ""]
    return "\n".join(sec.lines) + "\n"
