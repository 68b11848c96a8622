"""The head-to-head benchmark's pure parts: statistics, event logs, config rendering, the report.

The benchmark itself (real peers, minutes of runtime) is not run here; these
tests keep its arithmetic and its output honest.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from bench.head_to_head import report
from bench.head_to_head.adapters import CircusAdapter, PM2Adapter, ProcguardAdapter, SupervisordAdapter, Tools
from bench.head_to_head.events import parse_line, read_events, ready_children, ready_workers
from bench.head_to_head.stack import Guard, Stack, WorkerSpec
from bench.head_to_head.stats import (
    Summary,
    fmt_bytes,
    fmt_ratio,
    fmt_seconds,
    fmt_summary,
    percentile,
    ratio,
    summarize,
)

from procguard.config import parse_config

# -- statistics -------------------------------------------------------------------------------


def test_summarize_gives_median_and_range_and_ignores_non_finite():
    s = summarize([3.0, 1.0, 2.0, float("nan"), 10.0])
    assert s == Summary(median=2.5, low=1.0, high=10.0, n=4)
    assert summarize([]) is None
    assert summarize([float("inf")]) is None


def test_summary_round_trips_through_json():
    s = Summary(1.5, 1.0, 2.0, 3)
    assert Summary.from_dict(json.loads(json.dumps(s.to_dict()))) == s


def test_percentile_interpolates_and_rejects_empty():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_ratio_is_undefined_without_a_reference():
    assert ratio(3.0, 1.5) == 2.0
    assert ratio(None, 1.0) is None
    assert ratio(1.0, 0.0) is None
    assert fmt_ratio(None) == "—"
    assert fmt_ratio(2.345) == "2.3x"
    assert fmt_ratio(0.456) == "0.46x"
    assert fmt_ratio(31.2) == "31x"


def test_formats_pick_readable_units():
    assert fmt_seconds(0.0312) == "31 ms"
    assert fmt_seconds(1.034) == "1.03 s"
    assert fmt_seconds(42.4) == "42 s"
    assert fmt_bytes(25.3 * 1024 * 1024) == "25.3 MB"
    assert fmt_bytes(540 * 1024 * 1024) == "540 MB"
    assert fmt_bytes(1.5 * 1024**3) == "1.50 GB"
    assert fmt_summary(Summary(1.03, 0.9, 5.0, 10), "s") == "1.03 s (900 ms-5.00 s)"
    assert fmt_summary(Summary(1.0, 1.0, 1.0, 1), "s") == "1.00 s"
    assert fmt_summary(None, "s") == "—"


# -- event logs --------------------------------------------------------------------------------


def _load_worker_events_module():
    path = Path(__file__).resolve().parent.parent / "bench" / "head_to_head" / "workers" / "_events.py"
    spec = importlib.util.spec_from_file_location("bench_worker_events", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_worker_event_log_is_read_back_by_the_harness(tmp_path):
    ev = _load_worker_events_module()
    ev.open_log(str(tmp_path), "worker")
    ev.log("ready", name="idle")
    ev.log("rss", rss=ev.rss_bytes())
    (tmp_path / "child.999999.jsonl").write_text(
        '{"event": "ready", "t": 1.0, "pid": 999999}\n{"event": "ready", "t": 2.0, "pi'  # torn last line
    )
    events = read_events(tmp_path)
    assert [e.event for e in events if e.role == "worker"] == ["ready", "rss"]
    assert list(ready_children(events)) == [999999]
    (pid,) = ready_workers(events)
    assert events[-1].data["rss"] > 0
    assert pid > 0
    ev.open_log(str(tmp_path), "other")  # reopening closes the previous descriptor


def test_parse_line_rejects_foreign_lines():
    assert parse_line("not json", "worker") is None
    assert parse_line('{"event": "ready"}', "worker") is None
    event = parse_line('{"event": "signal", "t": 2.5, "pid": 42, "signum": 15}', "worker")
    assert event is not None and event.data == {"signum": 15} and event.t == 2.5


# -- config rendering --------------------------------------------------------------------------


@pytest.fixture
def tools(tmp_path):
    return Tools(peers_dir=tmp_path / "peers", repo_dir=Path(__file__).resolve().parent.parent,
                 python="/usr/bin/python3")


STACK = Stack(workers=(WorkerSpec("idle", "idle", count=3), WorkerSpec("leak", "leaker", args=("--limit-mb", "200"))),
              guard=Guard(mode="tight"))


def test_procguard_config_is_accepted_by_procguards_own_parser(tools):
    adapter = ProcguardAdapter(tools)
    text = adapter.render(STACK)["procguard.toml"]
    config = parse_config(text, path=adapter.conf)
    assert sorted(config.workers) == ["idle-00", "idle-01", "idle-02", "leak"]
    assert config.workers["leak"].limits.memory_limit_bytes == 200 * 1024 * 1024
    assert config.workers["idle-00"].command is not None
    assert "--events" in config.workers["idle-00"].command
    adapter.prepare(STACK)
    assert adapter.env()["PROCGUARD_SUPERVISOR_TUNING"] == "sample_interval_s=0.5"


def test_supervisord_config_uses_numprocs_and_the_fastest_memmon_tick(tools):
    text = SupervisordAdapter(tools).render(STACK)["supervisord.conf"]
    assert "numprocs=3" in text
    assert "--name 'idle-%(process_num)02d'" in text and "%%" not in text
    assert "memmon -p leak=200MB" in text
    assert "events=TICK_5" in text
    defaults = SupervisordAdapter(tools).render(Stack(workers=STACK.workers, guard=Guard(mode="defaults")))
    assert "events=TICK_60" in defaults["supervisord.conf"]


def test_circus_config_tightens_only_the_resource_watcher(tools):
    text = CircusAdapter(tools).render(STACK)["circus.ini"]
    assert "numprocesses = 3" in text
    assert "max_mem = 200M" in text and "loop_rate = 1" in text and "max_count = 0" in text
    defaults = CircusAdapter(tools).render(Stack(workers=STACK.workers, guard=Guard(mode="defaults")))["circus.ini"]
    assert "loop_rate" not in defaults and "max_mem = 200M" in defaults
    assert "tcp://127.0.0.1:" in text


def test_pm2_ecosystem_has_one_app_per_instance_and_the_limit_on_the_leaker(tools):
    apps = json.loads(PM2Adapter(tools).render(STACK)["ecosystem.json"])["apps"]
    assert [a["name"] for a in apps] == ["idle-00", "idle-01", "idle-02", "leak"]
    assert apps[-1]["max_memory_restart"] == "200M"
    assert "max_memory_restart" not in apps[0]
    assert apps[0]["interpreter"] == "/usr/bin/python3"


# -- report ------------------------------------------------------------------------------------


def _s(median, low=None, high=None, n=3):
    return {"median": median, "low": low if low is not None else median, "high": high if high is not None else median,
            "n": n}


RESULTS = {
    "machine": {"cpus": 2, "memory_gib": 24, "python": "3.11", "kernel": "6", "date": "today"},
    "versions": {"procguard": "procguard 0.1.0", "supervisord": "supervisord 4.3.0"},
    "scenarios": {
        "restart": {"quick": False, "data": {
            "procguard": {"latency": _s(0.9, 0.03, 2.0), "samples": [0.03, 0.9, 2.0], "first": 0.03, "note": ""},
            "supervisord": {"latency": _s(1.03), "samples": [1.03] * 3, "first": 1.03, "note": ""},
            "pm2": {"latency": _s(0.031), "samples": [0.031] * 3, "first": 0.031, "note": ""},
            "popen-loop": {"latency": _s(0.025), "samples": [0.025] * 3, "first": 0.025, "note": ""},
        }},
        "orphans": {"quick": False, "data": {
            "procguard@stop": {"worker_alive": False, "children_alive": 0, "children": 4},
            "procguard@kill-manager": {"worker_alive": False, "children_alive": 0, "children": 4},
            "supervisord@stop": {"worker_alive": False, "children_alive": 4, "children": 4},
            "supervisord@kill-manager": {"worker_alive": True, "children_alive": 4, "children": 4},
            "circus@stop": {"error": "RuntimeError: boom"},
        }},
        "memory": {"quick": False, "data": {
            "circus@defaults": {"acted": 0, "n": 1, "act_s": None, "peak_rss": _s(2e9, n=1), "how": [
                "did not act within 90 s"], "restarted": False, "budget_s": 90.0, "errors": []},
            "procguard@defaults": {"acted": 1, "n": 1, "act_s": _s(2.5, n=1), "peak_rss": _s(2.6e8, n=1),
                                   "how": ["graceful (SIGTERM handled)"], "restarted": True, "budget_s": 90.0,
                                   "errors": []},
        }},
    },
}


def test_report_says_where_procguard_loses_and_what_was_not_measured():
    text = report.render(RESULTS)
    assert text.startswith(report.BEGIN) and text.rstrip().endswith(report.END)
    losses = text.split("### Where procguard loses")[1]
    assert "**restart**" in losses and "PM2" in losses  # PM2's 31 ms beats procguard's 0.9 s median
    assert "**orphans**" not in losses  # 0 survivors beats supervisord's 9
    assert "did not act within 90 s" in text
    assert "failed: RuntimeError: boom" in text
    assert text.count("Not measured yet.") == 4  # footprint, stop, storm, probe
    assert "| 2. Restart latency | 900 ms median, 30 ms first crash | 31 ms (PM2) | **loses** (see below) |" in text
    assert "| 4. Orphans | 0 survivors (both cases) | 9 survivors (supervisord) | best or tied |" in text
    assert "| 1. Footprint | — | — | not measured yet |" in text


def test_report_replaces_only_its_own_section():
    other = "<!-- bench:other -->\nkeep me\n<!-- /bench:other -->\n"
    doc = "# Benchmarks\n\n" + other
    first = report.replace_section(doc, report.render(RESULTS))
    assert other in first and first.count(report.BEGIN) == 1
    second = report.replace_section(first, f"{report.BEGIN}\nnew\n{report.END}\n")
    assert other in second and "new" in second and "Head to head" not in second
    assert second.startswith("# Benchmarks\n")
    assert report.replace_section("", "x\n") == "x\n"


def test_rendered_markdown_tables_are_rectangular():
    for line_block in report.render(RESULTS).split("\n\n"):
        rows = [line for line in line_block.splitlines() if line.startswith("|")]
        if rows:
            widths = {row.count("|") for row in rows}
            assert len(widths) == 1, line_block


def test_a_kill_by_procguards_memory_guard_is_listed_as_a_loss_even_when_it_is_fastest():
    results = json.loads(json.dumps(RESULTS))
    results["scenarios"]["memory"]["data"]["procguard@defaults"].update(
        how=["killed (no handler ran)"], runs=[{"acted": True, "act_s": 2.5, "how": "killed (no handler ran)"}])
    results["scenarios"]["memory"]["data"]["pm2@defaults"] = {
        "acted": 1, "n": 1, "act_s": _s(18.0, n=1), "peak_rss": _s(5e8, n=1), "how": ["graceful (SIGINT handled)"],
        "restarted": True, "budget_s": 90.0, "errors": [], "runs": []}
    losses = report.render(results).split("### Where procguard loses")[1]
    assert "**memory**: at defaults, procguard ended the worker with SIGKILL (its handler did not run or did not finish) in 1 of 1 runs" in losses
    assert losses.count("**memory**") == 1  # one bullet per scenario, however many losses


def test_table_cells_never_break_a_row():
    results = json.loads(json.dumps(RESULTS))
    results["scenarios"]["storm"] = {"quick": False, "data": {"procguard": {
        "processes": 5, "workers": 3, "rss": 5e7, "start_codes": [0] * 10, "names": ["sh -c 'x\ny' | z"]}}}
    text = report.render(results)
    (row,) = [line for line in text.splitlines() if line.startswith("| procguard | 10x exit 0")]
    assert row.endswith("|") and "\\|" in row
