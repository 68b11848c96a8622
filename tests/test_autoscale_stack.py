"""Autoscaling for real: the example's API, job queue and jobs worker under ``procguard up``.

A burst of 2,000 jobs: the jobs worker goes from 1 copy to its max within
two sampling periods of the queue crossing the target, drains the queue,
and goes back to 1 copy only after ``scale_down_after``; every job is
completed exactly once (counted in the queue itself), a copy SIGKILLed
mid-burst included; the scale events are counted (no flapping). The
figures are printed (``pytest -s``).
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import sqlite3
import time
import urllib.request
from pathlib import Path
from typing import Any

from .conftest import Spawn
from .helpers import free_port, free_ports, wait_for
from .supervisor_workers.stackkit import Stack, write_config

REPO = Path(__file__).resolve().parent.parent
INTERVAL_S = 1.0
SCALE_DOWN_AFTER_S = 5.0
TARGET = 100
MAX = 4
BURST = 2000


def _call(url: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return dict(json.load(response))


def _stack(tmp_path: Path, state_dir: Path, spawn: Spawn) -> tuple[Stack, str, Path]:
    api_port = free_port()
    data = tmp_path / "data"
    config = write_config(
        tmp_path,
        {
            "api": {"command": f"python3 -m examples.analyticbot.api --port {api_port}"},
            "jobs": {
                "run": "examples.analyticbot.jobworker:consume",
                "interval": "0.1s",
                "health_port": free_ports(MAX),
                "depends_on": ["api"],
            },
        },
        project="autoscaled",
        defaults={
            "cwd": str(REPO),
            "grace": "10s",
            "env": {"ANALYTICBOT_DATA_DIR": str(data), "ANALYTICBOT_JOB_LEASE": "2"},
        },
    )
    with config.open("a") as toml:
        toml.write(
            "\n[workers.jobs.autoscale]\n"
            f'min = 1\nmax = {MAX}\nmetric = "queue_depth"\ntarget = {TARGET}\n'
            f'interval = "{INTERVAL_S}s"\nscale_down_after = "{SCALE_DOWN_AFTER_S}s"\n'
        )
    return Stack(config, state_dir, spawn, project="autoscaled"), f"http://127.0.0.1:{api_port}", data


def test_a_burst_of_2000_jobs_scales_up_drains_and_scales_back_without_losing_a_job(
    tmp_path: Path, state_dir: Path, spawn: Spawn
) -> None:
    stack, api, data = _stack(tmp_path, state_dir, spawn)
    stack.up()
    stack.wait_state("jobs", "running", timeout=30)
    wait_for(lambda: _call(f"{api}/api/jobs")["depth"] == 0, timeout=20, message="the API to answer")
    # the rule and (after a first reading) its value are in status
    shown = stack.wait_worker("jobs", lambda w: (w["autoscale"] or {}).get("value") is not None,
                              what="an autoscale reading", timeout=10)["autoscale"]
    assert shown["min"] == 1 and shown["max"] == MAX and shown["metric"] == "queue_depth"

    counts: list[tuple[float, int]] = []  # (time, copies) each time the count changed
    depths: list[tuple[float, int]] = []  # (time, depth) as the test saw it

    def observe() -> tuple[int, int]:
        copies = len([w for w in stack.status() or [] if w["worker"] == "jobs"])
        depth = int(_call(f"{api}/api/jobs")["depth"])
        now = time.monotonic()
        if not counts or counts[-1][1] != copies:
            counts.append((now, copies))
        depths.append((now, depth))
        return copies, depth

    observe()
    started = time.monotonic()
    _call(f"{api}/api/jobs", {"count": BURST})  # the queue crosses the target now
    wait_for(lambda: observe()[0] == MAX, timeout=4 * INTERVAL_S, interval=0.05,
             message=lambda: f"{MAX} copies; counts {counts}; {stack.output()[-2000:]}")
    to_max = time.monotonic() - started
    assert to_max <= 2 * INTERVAL_S, f"{MAX} copies {to_max:.2f} s after the burst"
    stack.wait_worker(f"jobs:{MAX}", lambda w: w["state"] == "running", what="running", timeout=15)
    all_running = time.monotonic() - started

    # a copy killed in the middle of its jobs: what it held goes back to the queue after the lease
    victim = stack.worker("jobs:2")
    assert victim is not None and victim["pid"]
    os.kill(int(victim["pid"]), signal.SIGKILL)

    wait_for(lambda: observe()[1] == 0, timeout=120, interval=0.2,
             message=lambda: f"the queue to drain; depth {depths[-1:]}, counts {counts}")
    drained = time.monotonic() - started
    wait_for(lambda: observe()[0] == 1, timeout=6 * SCALE_DOWN_AFTER_S, interval=0.1,
             message=lambda: f"back to 1 copy; counts {counts}; {stack.output()[-2000:]}")
    back_to_one = time.monotonic() - started

    # no job lost, none completed twice (the queue counts every completion)
    with sqlite3.connect(data / "jobs.sqlite3") as db:
        completions = dict(db.execute("SELECT completions, COUNT(*) FROM jobs GROUP BY completions").fetchall())
        states = dict(db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())
        retried = db.execute("SELECT COUNT(*) FROM jobs WHERE attempts > 1").fetchone()[0]
    assert states == {"done": BURST}
    assert completions == {1: BURST}

    # scaled down only once fewer copies had been enough for scale_down_after (the test saw the
    # depth; the supervisor reads it up to one interval later)
    first_down = next(t for t, n in counts if n < MAX and t > counts[0][0])
    last_busy = max(t for t, depth in depths if t < first_down and depth > (MAX - 1) * TARGET)
    assert first_down - last_busy >= SCALE_DOWN_AFTER_S - INTERVAL_S, (counts, depths[-40:])
    last_over_one = max(t for t, depth in depths if depth > TARGET)
    assert counts[-1][0] - last_over_one >= SCALE_DOWN_AFTER_S - INTERVAL_S

    # the scale events: one up, then only down (no flapping); each a history row with the value
    history = json.loads(stack.cli("history", "--json", "-n", "0").stdout)
    scales = [e for e in reversed(history) if e["event"] == "scale"]
    steps = [tuple(int(word) for word in e["detail"].split(";")[0].split() if word.isdigit()) for e in scales]
    assert steps[0] == (1, MAX), scales
    assert all(new < old for old, new in steps[1:]), scales
    assert steps[-1][1] == 1
    assert "queue_depth" in scales[0]["detail"]
    copy_counts = [n for _t, n in counts]  # as status showed them: 1, MAX, then only fewer
    assert copy_counts[:2] == [1, MAX], counts
    assert all(new < old for old, new in itertools.pairwise(copy_counts[1:])), counts
    print(
        f"\nburst of {BURST}: {MAX} copies {to_max:.2f} s after (all running {all_running:.2f} s),"
        f" drained {drained:.1f} s, back to 1 copy {back_to_one:.1f} s; scale events {len(scales)}"
        f" ({', '.join(f'{a}->{b}' for a, b in steps)}); completed once {completions.get(1)},"
        f" twice {completions.get(2, 0)}; jobs taken again after the kill {retried}"
    )
