"""PNG plots of the head-to-head results (run with the benchmark environment's Python).

``python plots.py RESULTS.json OUT_DIR`` writes ``h2h-<scenario>.png`` for each
scenario present. Stand-alone on purpose: matplotlib lives only in
bench/.peers/venv, not in the project's environment.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

TOOLS = ("procguard", "supervisord", "circus", "pm2")
LABEL = {"procguard": "procguard", "supervisord": "supervisord", "circus": "circus", "pm2": "PM2"}
COLOR = {"procguard": "#2a7ab0", "supervisord": "#999999", "circus": "#b0803a", "pm2": "#6a9a4a"}
MIB = 1024 * 1024


def _err(summary: dict[str, float] | None, scale: float = 1.0) -> tuple[float, list[float]]:
    if not summary:
        return 0.0, [0.0, 0.0]
    m = summary["median"] / scale
    return m, [m - summary["low"] / scale, summary["high"] / scale - m]


def _bars(ax: Any, labels: list[str], values: list[tuple[float, list[float]]], colors: list[str],
          unit: str) -> None:
    xs = range(len(labels))
    heights = [v for v, _ in values]
    errs = [[e[0] for _, e in values], [e[1] for _, e in values]]
    ax.bar(xs, heights, yerr=errs, color=colors, capsize=3)
    ax.set_xticks(list(xs), labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(unit)
    for x, h in zip(xs, heights, strict=True):
        ax.annotate(f"{h:.0f}" if h >= 100 else f"{h:.3g}", (x, h), ha="center", va="bottom", fontsize=8)


def footprint(data: dict[str, Any], out: Path) -> None:
    sizes = sorted({int(k.split("@")[1]) for k in data})
    fig, axes = plt.subplots(1, len(sizes), figsize=(5 * len(sizes), 3.6), sharey=True)
    for ax, size in zip(axes if len(sizes) > 1 else [axes], sizes, strict=True):
        tools = [t for t in TOOLS if "rss" in data.get(f"{t}@{size}", {})]
        _bars(ax, [LABEL[t] for t in tools], [_err(data[f"{t}@{size}"]["rss"], MIB) for t in tools],
              [COLOR[t] for t in tools], "manager RSS (MiB)")
        ax.set_title(f"{size} idle worker{'s' if size > 1 else ''}")
    fig.suptitle("Manager footprint (lower is better)")
    fig.tight_layout()
    fig.savefig(out / "h2h-footprint.png", dpi=110)
    plt.close(fig)


def restart(data: dict[str, Any], out: Path) -> None:
    keys = [k for k in (*TOOLS, "procguard (no backoff)", "popen-loop") if data.get(k, {}).get("latency")]
    fig, ax = plt.subplots(figsize=(7, 3.8))
    _bars(ax, [LABEL.get(k, k) for k in keys], [_err(data[k]["latency"], 0.001) for k in keys],
          [COLOR.get(k.split(" ")[0], "#444444") for k in keys], "crash to replacement running (ms)")
    ax.set_yscale("log")
    ax.set_title("Restart latency, median and range (lower is better; log scale)")
    fig.tight_layout()
    fig.savefig(out / "h2h-restart.png", dpi=110)
    plt.close(fig)


def memory(data: dict[str, Any], out: Path) -> None:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 4.4))
    labels, acts, peaks, colors, hatches = [], [], [], [], []
    kills: list[bool] = []
    for mode in ("defaults", "tight"):
        for tool in TOOLS:
            entry = data.get(f"{tool}@{mode}")
            if not entry or "n" not in entry:
                continue
            labels.append(f"{LABEL[tool]}\n{mode}")
            acted = entry.get("acted", 0) == entry.get("n", 0) and entry.get("act_s")
            acts.append(_err(entry["act_s"]) if acted else (float(entry.get("budget_s", 0)), [0.0, 0.0]))
            hatches.append("" if acted else "//")
            kills.append(any("killed" in str(how) for how in entry.get("how", [])))
            peaks.append(_err(entry.get("peak_rss"), MIB))
            colors.append(COLOR[tool])
    _bars(ax1, labels, acts, colors, "seconds after crossing 200 MB")
    for patch, hatch in zip(ax1.patches, hatches, strict=False):
        patch.set_hatch(hatch)
        if hatch:
            patch.set_alpha(0.5)
    for x, (killed, (height, _)) in enumerate(zip(kills, acts, strict=True)):
        if killed:
            ax1.annotate("SIGKILL", (x, height), xytext=(0, 12), textcoords="offset points", ha="center",
                         color="red", fontsize=8)
    ax1.set_title("Time to act (hatched: did not act within the budget; red: killed, no graceful stop)")
    _bars(ax2, labels, peaks, colors, "peak RSS (MiB)")
    ax2.axhline(200, color="red", linewidth=1, linestyle="--")
    ax2.set_title("Peak RSS of the leaking worker (limit: dashed)")
    fig.tight_layout()
    fig.savefig(out / "h2h-memory.png", dpi=110)
    plt.close(fig)


def stop(data: dict[str, Any], out: Path) -> None:
    tools = [t for t in TOOLS if data.get(t, {}).get("all_gone_s")]
    fig, ax = plt.subplots(figsize=(7, 3.8))
    xs = range(len(tools))
    gone = [_err(data[t]["all_gone_s"]) for t in tools]
    cmd = [_err(data[t]["command_s"]) for t in tools]
    ax.bar([x - 0.2 for x in xs], [g for g, _ in cmd], width=0.4, color="#cccccc", label="stop command returned")
    ax.bar([x + 0.2 for x in xs], [g for g, _ in gone], width=0.4, color=[COLOR[t] for t in tools],
           label="all 50 workers gone")
    ax.set_xticks(list(xs), [LABEL[t] for t in tools])
    ax.axhline(0.5, color="red", linewidth=1, linestyle="--")
    ax.set_ylabel("seconds")
    ax.set_title("Graceful stop of 50 workers needing 0.5 s each (lower is better)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "h2h-stop.png", dpi=110)
    plt.close(fig)


def storm(data: dict[str, Any], out: Path) -> None:
    keys = [k for k in (*TOOLS, "shell &") if "processes" in data.get(k, {})]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    labels = [LABEL.get(k, "python &") for k in keys]
    colors = [COLOR.get(k, "#444444") for k in keys]
    _bars(ax1, labels, [(float(data[k]["processes"]), [0.0, 0.0]) for k in keys], colors, "processes")
    ax1.set_title("Processes after 10 starts of a 3-worker stack")
    _bars(ax2, labels, [(data[k]["rss"] / MIB, [0.0, 0.0]) for k in keys], colors, "RSS (MiB)")
    ax2.set_title("Their memory")
    fig.tight_layout()
    fig.savefig(out / "h2h-storm.png", dpi=110)
    plt.close(fig)


def probe(data: dict[str, Any], out: Path) -> None:
    keys = [k for k in ("procguard@idle", "procguard@cpu", "prometheus_client@idle", "prometheus_client@cpu")
            if "p50" in data.get(k, {})]
    fig, ax = plt.subplots(figsize=(7, 3.8))
    xs = range(len(keys))
    ax.bar([x - 0.2 for x in xs], [data[k]["p50"] * 1000 for k in keys], width=0.4, label="p50", color="#2a7ab0")
    ax.bar([x + 0.2 for x in xs], [data[k]["p99"] * 1000 for k in keys], width=0.4, label="p99", color="#b0803a")
    ax.set_xticks(list(xs), [k.replace("@", "\n") for k in keys])
    ax.set_ylabel("ms")
    ax.set_title("Health/metrics GET latency, worker idle vs CPU-bound")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "h2h-probe.png", dpi=110)
    plt.close(fig)


PLOTTERS = {"footprint": footprint, "restart": restart, "memory": memory, "stop": stop, "storm": storm,
            "probe": probe}


def main(argv: list[str]) -> int:
    results = json.loads(Path(argv[0]).read_text())
    out = Path(argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for name, entry in results.get("scenarios", {}).items():
        if name in PLOTTERS:
            PLOTTERS[name](entry["data"], out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
