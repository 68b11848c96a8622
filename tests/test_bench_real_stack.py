"""The head-to-head "real stack" and "memory guard rounds" scenarios, without the peers.

The scenarios themselves need supervisord and PM2 and minutes; here: the
stack each tool is given (procguard's config through procguard's own
parser), the benchmark's new worker programs as real processes (the HTTP
service answering and stopping gracefully, the periodic job as a real
function worker of ``procguard run``, whose process must be the one that
logs ``ready``), how the harness tells a manager's process from a program
(real process trees), and the report's verdicts and publishing.
"""

from __future__ import annotations

import http.client
import json
import os
import shlex
import signal
import sys
from pathlib import Path

import pytest
from bench.head_to_head import __main__ as h2h_main
from bench.head_to_head import report, report_real
from bench.head_to_head.adapters import PM2Adapter, ProcguardAdapter, SupervisordAdapter, Tools
from bench.head_to_head.adapters.base import Adapter
from bench.head_to_head.events import read_events, ready_workers
from bench.head_to_head.real_stack import classify, free_ports, role, specs, stack_for
from bench.head_to_head.stack import WORKERS_DIR

from procguard.config import parse_config
from tests.helpers import python_env, wait_for

MIB = 1024 * 1024


@pytest.fixture
def tools(tmp_path: Path) -> Tools:
    return Tools(peers_dir=tmp_path / "peers", repo_dir=Path(__file__).resolve().parent.parent,
                 python=sys.executable)


def _stack(size: int):
    served = [n for spec in specs(size) if spec.health for n in spec.instance_names()]
    return stack_for(size, 200, dict(zip(served, range(30001, 30001 + len(served)), strict=True)))


# -- what each tool is given ----------------------------------------------------------------------


def test_procguard_gets_a_function_worker_health_ports_and_a_limit_on_every_program(tools):
    adapter = ProcguardAdapter(tools)
    config = parse_config(adapter.render(_stack(2))["procguard.toml"], path=adapter.conf)
    assert sorted(config.workers) == ["cmd-00", "cmd-01", "http-00", "http-01", "job-00", "job-01"]
    job = config.workers["job-01"]
    assert job.run == "ticker:tick" and job.command is None
    assert job.limits.interval_s == 1.0
    assert job.env["BENCH_NAME"] == "job-01" and job.env["BENCH_EVENTS"] == str(adapter.layout.events_dir)
    assert job.env["PYTHONPATH"] == str(WORKERS_DIR)
    assert [config.workers[n].limits.health_port for n in ("http-00", "http-01", "cmd-00", "job-00")] == [
        30001, 30002, None, None]
    assert {w.limits.memory_limit_bytes for w in config.workers.values()} == {200 * MIB}
    assert config.workers["cmd-00"].command is not None and "idle.py" in config.workers["cmd-00"].command[1]


def test_memmon_covers_every_program_and_pm2_limits_every_app(tools):
    many = SupervisordAdapter(tools).render(_stack(10))["supervisord.conf"]
    assert "memmon -g http=200MB -g job=200MB -g cmd=200MB" in many  # one -g per numprocs group
    assert "events=TICK_60" in many  # the real stack runs every tool at its defaults
    one = SupervisordAdapter(tools).render(_stack(1))["supervisord.conf"]
    assert "memmon -p http=200MB -p job=200MB -p cmd=200MB" in one
    apps = json.loads(PM2Adapter(tools).render(_stack(2))["ecosystem.json"])["apps"]
    assert len(apps) == 6 and {a["max_memory_restart"] for a in apps} == {"200M"}
    job = next(a for a in apps if a["name"] == "job-00")
    assert job["script"].endswith("ticker.py") and job["args"][-2:] == ["--interval", "1"]


def test_free_ports_are_distinct_and_never_the_users_fixed_ones():
    ports = free_ports(60)
    assert len(set(ports)) == 60
    assert not set(ports) & {8081, 9091, 9092, 9093, 9100}


# -- the worker programs, as real processes --------------------------------------------------------


def test_http_service_answers_on_the_port_it_logs_and_stops_gracefully(tmp_path, spawn):
    proc = spawn([sys.executable, str(WORKERS_DIR / "httpsvc.py"), "--events", str(tmp_path), "--name", "http-00"])
    ready = wait_for(lambda: ready_workers(read_events(tmp_path)), message="the HTTP service's ready event")
    (event,) = ready.values()
    assert event.pid == proc.pid and event.data["name"] == "http-00"
    conn = http.client.HTTPConnection("127.0.0.1", int(str(event.data["port"])), timeout=5)
    conn.request("GET", "/")
    response = conn.getresponse()
    assert (response.status, response.read()) == (200, b"ok\n")
    conn.close()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    assert [e.event for e in read_events(tmp_path)][-2:] == ["signal", "exit"]


def test_the_job_under_procguard_run_logs_ready_from_the_runners_own_process(tmp_path, spawn, state_dir):
    """A function worker's process is the worker: the pid that logs ``ready`` is procguard run's."""
    events = tmp_path / "events"
    events.mkdir()
    env = python_env()
    env.update(BENCH_EVENTS=str(events), BENCH_NAME="job-00",
               PYTHONPATH=os.pathsep.join([str(WORKERS_DIR), env.get("PYTHONPATH", "")]),
               PROCGUARD_STATE_DIR=str(state_dir))
    proc = spawn([sys.executable, "-m", "procguard", "run", "ticker:tick", "--once", "--health-port", "0",
                  "--name", "job-00"], env=env)
    assert proc.wait(timeout=30) == 0, proc.stderr.read().decode() if proc.stderr else ""
    (pid,) = ready_workers(read_events(events))
    assert pid == proc.pid


def test_a_wrapper_is_the_managers_and_the_program_below_it_is_a_worker(tmp_path, spawn):
    adapter = Adapter(Tools(peers_dir=tmp_path, repo_dir=Path(__file__).resolve().parent.parent))
    adapter.layout.events_dir.mkdir(parents=True)
    job = [sys.executable, str(WORKERS_DIR / "ticker.py"), "--events", str(adapter.layout.events_dir),
           "--name", "job-00", "--interval", "1"]
    # "; exit" keeps the shell alive as the job's parent, as a `procguard run` wrapper stays.
    wrapper = spawn(["/bin/sh", "-c", shlex.join(job) + "; exit 0"])
    wait_for(adapter.worker_pids, message="the job's ready event")
    manager, workers = classify(adapter)
    (job_pid,) = adapter.worker_pids()
    assert workers.get("job") == [job_pid] and job_pid != wrapper.pid
    assert wrapper.pid in manager and job_pid not in manager
    assert role(["/bin/sh", "-c", shlex.join(job) + "; exit 0"]) == "sh -c (inline script)"


def test_manager_process_names_leave_out_instance_names_and_paths():
    assert role(["/v/bin/python", "-m", "procguard", "run", "--name", "bench.http-07", "--", "x"]) == \
        "python -m procguard run"
    assert role(["/v/bin/python3", "-m", "procguard", "up", "-c", "/a/procguard.toml"]) == "python -m procguard up"
    assert role(["/v/bin/python", "-m", "procguard.instances.guardian", "--pid", "1"]) == \
        "python -m procguard.instances.guardian"
    assert role(["/v/bin/python", "/v/bin/supervisord", "-n", "-c", "/a/s.conf"]) == "supervisord"
    assert role(["/v/bin/python", "/v/bin/memmon", "-g", "http=200MB"]) == "memmon"
    assert role(["PM2 v7.0.4: God Daemon (/a/home)"]) == "PM2 v7.0.4: God Daemon"


# -- the report ---------------------------------------------------------------------------------


def _entry(rss_mb: float, breakdown: list[list[object]], job_mb: float = 10.0) -> dict[str, object]:
    return {"manager_rss": rss_mb * MIB, "manager_rss_range": [rss_mb * MIB, rss_mb * MIB],
            "manager_processes": sum(int(str(b[1])) for b in breakdown), "breakdown": breakdown,
            "cpu_pct": 0.5, "worker_rss_each": {"http": 19 * MIB, "job": job_mb * MIB, "cmd": 10 * MIB},
            "workers": {"http": 1, "job": 1, "cmd": 1}, "http_answered": [1, 1]}


def _guard(median: float, worst: float, peak_mb: float, how: str = "graceful (SIGTERM handled)"):
    runs = [{"acted": True, "act_s": median, "peak_rss": peak_mb * MIB, "how": how}]
    return {"runs": runs, "act_s": {"median": median, "low": median / 2, "high": worst, "n": 10},
            "peak_rss": {"median": peak_mb * MIB, "low": peak_mb * MIB, "high": peak_mb * MIB, "n": 10},
            "acted": 10, "n": 10, "how": [how], "restarted": True, "errors": [], "limit_mib": 200}


RESULTS = {
    "machine": {"cpus": 2, "memory_gib": 24, "python": "3.11", "kernel": "6"},
    "versions": {"procguard": "procguard 0.1.0"},
    "scenarios": {
        "real_stack": {"quick": False, "commit": "abc1234567", "date": "2026-11-30 13:00 UTC", "data": {
            "procguard@1": _entry(44.0, [["python -m procguard up", 1, 20 * MIB]], job_mb=25.0),
            "supervisord@1": _entry(48.0, [["supervisord", 1, 25 * MIB], ["memmon", 1, 23 * MIB]]),
            "procguard@50": _entry(1200.0, [["python -m procguard run", 50, 1150 * MIB]], job_mb=25.0),
            "supervisord@50": _entry(49.0, [["supervisord", 1, 26 * MIB], ["memmon", 1, 23 * MIB]]),
            "pm2@50": {"error": "RuntimeError: boom"},
        }},
        "memory_guard": {"quick": True, "commit": "abc1234567", "date": "2026-11-30 13:10 UTC", "data": {
            "procguard@defaults": _guard(0.230, 0.240, 205.0),
            "pm2@tight": _guard(0.190, 0.850, 204.0),
        }},
    },
}


def test_real_stack_verdict_is_read_from_the_figures():
    text = report_real.render(RESULTS)
    assert text.startswith(report_real.BEGIN) and text.rstrip().endswith(report_real.END)
    assert "Met at 1 copy. Not met at 50 (1.17 GB against 49.0 MB)." in text
    losses = text.split("### Where procguard loses here")[1]
    assert "`python -m procguard run` x50 (1.12 GB)" in losses
    assert "failed: RuntimeError: boom" in text
    assert "measured 2026-11-30 13:00 UTC on commit `abc1234567`" in text
    assert "holds 15.0 MB more than the same loop" in text  # the function worker's own weight is shown
    fixed = json.loads(json.dumps(RESULTS))
    fixed["scenarios"]["real_stack"]["data"]["procguard@50"] = _entry(45.0, [["python -m procguard up", 1, 45 * MIB]])
    assert "Met at every measured size (1, 50 copies)." in report_real.render(fixed)
    assert "**real stack**" not in report_real.render(fixed)


def test_memory_guard_rounds_report_median_worst_and_the_goal():
    text = report_real.render(RESULTS)
    assert "| procguard | `memory_limit`, supervisor at its defaults | 10 of 10 | 230 ms | 240 ms | 115 ms |" in text
    assert "Measured: median 230 ms, worst 240 ms, worst peak 1.025x: not met." in text
    assert "a `--quick` run" in text.split("### 9.")[1]
    assert "median detection 230 ms at defaults against PM2" in text.split("### Where procguard loses here")[1]
    for block in text.split("\n\n"):
        rows = [line for line in block.splitlines() if line.startswith("|")]
        if rows:
            assert len({row.count("|") for row in rows}) == 1, block


def test_publishing_only_these_scenarios_leaves_the_other_head_to_head_figures_alone(tmp_path):
    main = f"{report.BEGIN}\nearlier figures\n{report.END}"
    doc = tmp_path / "docs" / "benchmarks.md"
    doc.parent.mkdir()
    doc.write_text(f"# Benchmarks\n\n{main}\n\n<!-- bench:other -->\nkeep\n<!-- /bench:other -->\n")
    (tmp_path / "bench" / "results").mkdir(parents=True)
    report.publish(RESULTS, tmp_path, tmp_path / "no-peers")
    first = doc.read_text()
    assert main in first and first.count(report_real.BEGIN) == 1
    assert first.index(report.END) < first.index(report_real.BEGIN) < first.index("<!-- bench:other -->")
    report.publish(RESULTS, tmp_path, tmp_path / "no-peers")
    assert doc.read_text() == first


def test_only_takes_a_comma_separated_list_and_refuses_unknown_names(capsys):
    args = h2h_main._parse(["--only", "real_stack,memory_guard", "--only", "real_stack"])
    assert args.only == ["real_stack", "memory_guard"]
    with pytest.raises(SystemExit) as exc:
        h2h_main._parse(["--only", "real_stack,bogus"])
    assert exc.value.code == 2
    assert "unknown scenario bogus" in capsys.readouterr().err
