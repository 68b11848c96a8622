"""No orphans when the runner itself is SIGKILLed: the guardian sweeps the marker.

supervisord, circus and PM2 were measured leaving the worker's 4 multiprocessing children
alive after the manager is SIGKILLed. Here the same scenario must leave 0.
"""

from __future__ import annotations

import json
import signal
import sys
import time
import uuid
from pathlib import Path

import psutil

from procguard.instances.marker import MARKER_ENV, new_marker

from .helpers import PROCGUARD, PYTHON, python_env, wait_for, wait_for_file
from .helpers import TEST_NAMESPACE as NS
from .test_lock import assert_untouched, start_canary

#: A plain Python worker (knows nothing of procguard) with 4 daemon multiprocessing children.
MP_WORKER = r"""
import multiprocessing, os, sys, time
def child():
    time.sleep(600)
if __name__ == "__main__":
    ctx = multiprocessing.get_context("fork")
    kids = [ctx.Process(target=child, daemon=True) for _ in range(4)]
    for k in kids:
        k.start()
    open(sys.argv[1] + ".tmp", "w").write(json.dumps([os.getpid()] + [k.pid for k in kids]))
    os.rename(sys.argv[1] + ".tmp", sys.argv[1])
    time.sleep(600)
""".replace("import multiprocessing", "import json, multiprocessing")

#: What a runner does: marker, guardian, worker via spawn_process; then waits.
RUNNER_LIKE = r"""
import os, sys, time
from procguard.instances.guardian import start_guardian
from procguard.instances.spawn import spawn_process
marker, worker_code, pids_file, ready = sys.argv[1:5]
guardian = start_guardian(marker, grace_s=1.0)
worker = spawn_process([sys.executable, "-c", worker_code, pids_file], marker=marker)
open(ready, "w").write(str(guardian.pid))
if len(sys.argv) > 5:
    while not os.path.exists(pids_file):
        time.sleep(0.01)
    sys.exit(0)            # exit "normally", leaving the worker to the guardian
time.sleep(600)
"""


def _survivors(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def test_sigkilled_runner_leaves_no_multiprocessing_children(spawn, tmp_path: Path) -> None:
    marker = new_marker(f"guard{uuid.uuid4().hex[:6]}", NS)
    pids_file, ready = tmp_path / "pids.json", tmp_path / "ready"
    runner = spawn([PYTHON, "-c", RUNNER_LIKE, marker, MP_WORKER, str(pids_file), str(ready)])
    guardian = psutil.Process(int(wait_for_file(ready, proc=runner)))
    pids = json.loads(wait_for_file(pids_file, proc=runner))
    assert len(_survivors(pids)) == 5
    bystander, log = start_canary(spawn, tmp_path, "bystander",
                                  env=python_env(**{MARKER_ENV: marker.rsplit(":", 1)[0] + ":other"}))

    t0 = time.monotonic()
    runner.send_signal(signal.SIGKILL)
    try:
        wait_for(lambda: not _survivors(pids), timeout=15, message=lambda: f"survivors {_survivors(pids)}")
    finally:
        _kill_all(pids)
    elapsed = time.monotonic() - t0
    sys.stderr.write(f"0 survivors {elapsed:.2f}s after SIGKILL of the runner\n")
    assert elapsed < 2.0 * 2.5  # the goal is 2 s; generous on a shared machine
    wait_for(lambda: not _survivors([guardian.pid]), message="guardian exits after its sweep")
    assert_untouched(bystander, log)  # same name, other marker id: not ours


def test_guardian_sweeps_after_a_normal_exit_too(spawn, tmp_path: Path) -> None:
    marker = new_marker(f"guard{uuid.uuid4().hex[:6]}", NS)
    pids_file, ready = tmp_path / "pids.json", tmp_path / "ready"
    runner = spawn([PYTHON, "-c", RUNNER_LIKE, marker, MP_WORKER, str(pids_file), str(ready), "exit"])
    assert runner.wait(timeout=30) == 0
    pids = json.loads(wait_for_file(pids_file))
    try:
        wait_for(lambda: not _survivors(pids), message=lambda: f"survivors {_survivors(pids)}")
    finally:
        _kill_all(pids)


def test_guardian_stands_down_on_sigterm(spawn, tmp_path: Path) -> None:
    from procguard.instances.guardian import start_guardian

    marker = new_marker(f"guard{uuid.uuid4().hex[:6]}", NS)
    canary, log = start_canary(spawn, tmp_path, "marked", env=python_env(**{MARKER_ENV: marker}))
    guardian = start_guardian(marker, grace_s=1.0)
    try:
        guardian.terminate()
        assert guardian.wait(timeout=30) == -signal.SIGTERM
    finally:
        if guardian.poll() is None:
            guardian.kill()
            guardian.wait()
    assert_untouched(canary, log)


def test_sigkill_of_procguard_run_leaves_zero_survivors(state_dir: Path, spawn, tmp_path: Path) -> None:
    """The issue's scenario, through the real runner (command mode)."""
    pids_file = tmp_path / "pids.json"
    name = f"mprun{uuid.uuid4().hex[:6]}"
    runner = spawn([*PROCGUARD, "run", "--name", name, "--health-port", "0", "--grace", "1",
                    "--", PYTHON, "-c", MP_WORKER, str(pids_file)])
    pids = json.loads(wait_for_file(pids_file, proc=runner))
    try:
        assert len(_survivors(pids)) == 5
        t0 = time.monotonic()
        runner.send_signal(signal.SIGKILL)
        wait_for(lambda: not _survivors(pids), timeout=15, message=lambda: f"survivors {_survivors(pids)}")
        elapsed = time.monotonic() - t0
        sys.stderr.write(f"procguard run: 0 survivors {elapsed:.2f}s after SIGKILL\n")
        assert elapsed < 2.0 * 2.5  # the goal is 2 s; generous on a shared machine
    finally:
        _kill_all(pids)


def _kill_all(pids: list[int]) -> None:
    """Test hygiene when an assertion failed: never leave the orphans behind."""
    for pid in _survivors(pids):
        try:
            psutil.Process(pid).kill()
        except psutil.Error:
            pass


#: A supervisor-like parent: one guardian for its worker names, workers restarted under fresh markers.
SUPERVISOR_LIKE = r"""
import json, os, sys, time
from procguard.instances.guardian import start_guardian
from procguard.instances.marker import new_marker
from procguard.instances.spawn import spawn_process
names, worker_code, out, ready, ns = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
guardian = start_guardian(names=names, namespace=ns, grace_s=1.0)
files = []
for i, name in enumerate(names):
    for restart in range(2):   # the first generation exits, the second runs
        path = f"{out}-{i}-{restart}"
        p = spawn_process([sys.executable, "-c", worker_code, path], marker=new_marker(name, ns))
        files.append(path)
        if restart == 0:
            while not os.path.exists(path):
                time.sleep(0.01)
            p.kill(); p.wait()
open(ready, "w").write(json.dumps(files))
time.sleep(600)
"""


def test_guardian_by_names_covers_every_generation(spawn, tmp_path: Path) -> None:
    stack = f"stack{uuid.uuid4().hex[:6]}"
    names = [f"{stack}.a", f"{stack}.b"]
    out, ready = tmp_path / "pids", tmp_path / "ready"
    parent = spawn([PYTHON, "-c", SUPERVISOR_LIKE, json.dumps(names), MP_WORKER, str(out), str(ready), NS])
    files = json.loads(wait_for_file(ready, proc=parent))
    pids = [pid for f in files for pid in json.loads(wait_for_file(Path(f)))]
    # The killed first generation left its multiprocessing children behind already.
    assert len(_survivors(pids)) == 2 * 4 + 2 * 5
    other, log = start_canary(spawn, tmp_path, "otherstack",
                              env=python_env(**{MARKER_ENV: new_marker(f"{stack}.c", NS)}))
    # The same stack and worker names in another state directory: not this guardian's.
    twin, twin_log = start_canary(spawn, tmp_path, "otherdir",
                                  env=python_env(**{MARKER_ENV: new_marker(names[0], "0badcafe")}))
    parent.send_signal(signal.SIGKILL)
    try:
        wait_for(lambda: not _survivors(pids), message=lambda: f"survivors {_survivors(pids)}")
    finally:
        _kill_all(pids)
    assert_untouched(other, log)
    assert_untouched(twin, twin_log)
