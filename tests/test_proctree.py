"""proctree: descendants, tree memory, and the TERM -> wait -> KILL stop, on real processes."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import psutil
import pytest

from procguard.proctree import (
    StopResult,
    descendants,
    is_gone,
    process_tree,
    protected_pids,
    stop_processes,
    terminate_processes,
    terminate_tree,
    tree_memory_bytes,
)

from .helpers import PYTHON, wait_for, wait_for_file

#: A parent with two multiprocessing children, each holding some memory.
FAMILY = r"""
import multiprocessing, os, sys, time

def child(n):
    data = bytearray(n * 1024 * 1024)
    time.sleep(600)

if __name__ == "__main__":
    ctx = multiprocessing.get_context("fork")
    kids = [ctx.Process(target=child, args=(20,)) for _ in range(2)]
    for k in kids:
        k.start()
    open(sys.argv[1] + ".tmp", "w").write(" ".join(str(k.pid) for k in kids))
    os.rename(sys.argv[1] + ".tmp", sys.argv[1])
    time.sleep(600)
"""

IGNORES_TERM = r"""
import signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
open(sys.argv[1], "w").write("ready")
time.sleep(600)
"""

SLEEPER = [PYTHON, "-c", "import time; time.sleep(600)"]


def _family(spawn, tmp_path: Path) -> tuple[object, list[int]]:
    ready = tmp_path / "family.pids"
    proc = spawn([PYTHON, "-c", FAMILY, str(ready)])
    kids = [int(x) for x in wait_for_file(ready, proc=proc).split()]
    return proc, kids


def test_descendants_and_tree_memory(spawn, tmp_path: Path) -> None:
    proc, kids = _family(spawn, tmp_path)
    assert {p.pid for p in descendants(proc.pid)} >= set(kids)
    assert process_tree(proc.pid)[0].pid == proc.pid
    root_only = tree_memory_bytes(proc.pid, include_children=False)
    total = tree_memory_bytes(proc.pid)
    assert total >= root_only + 2 * 20 * 1024 * 1024 * 0.9  # the children's 20 MB each count
    assert descendants(2**22 + 1) == [] and tree_memory_bytes(2**22 + 1) == 0


def test_stop_tree_terminates_whole_family(spawn, tmp_path: Path) -> None:
    proc, kids = _family(spawn, tmp_path)
    gone, alive = terminate_tree(proc.pid, grace_s=10)
    assert alive == []
    assert {p.pid for p in gone} >= {proc.pid, *kids}
    assert proc.wait(timeout=10) == -signal.SIGTERM


def test_term_ignored_is_killed_after_grace(spawn, tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    stubborn = spawn([PYTHON, "-c", IGNORES_TERM, str(ready)])
    polite = spawn(SLEEPER)
    wait_for_file(ready, proc=stubborn)
    outcomes = stop_processes([psutil.Process(stubborn.pid), psutil.Process(polite.pid)], grace_s=0.3)
    assert [(o.pid, o.result) for o in outcomes] == [
        (stubborn.pid, StopResult.KILLED),
        (polite.pid, StopResult.TERMINATED),
    ]
    assert stubborn.wait(timeout=10) == -signal.SIGKILL
    assert polite.wait(timeout=10) == -signal.SIGTERM


def test_never_signals_itself_its_ancestors_or_init() -> None:
    protected = protected_pids()
    assert {0, 1, os.getpid(), os.getppid()} <= protected
    procs = [psutil.Process(os.getpid()), psutil.Process(os.getppid()), psutil.Process(1)]
    outcomes = stop_processes(procs, grace_s=0)
    assert [o.result for o in outcomes] == [StopResult.PROTECTED] * 3
    gone, alive = terminate_processes(procs, grace_s=0)
    assert gone == [] and len(alive) == 3


def test_exited_process_is_already_gone_not_an_error(spawn) -> None:
    proc = spawn(SLEEPER)
    handle = psutil.Process(proc.pid)
    proc.kill()
    proc.wait(timeout=10)
    [outcome] = stop_processes([handle], grace_s=1)
    assert outcome.result is StopResult.ALREADY_GONE


ZOMBIE_MAKER = r"""
import os, sys, time
pid = os.fork()
if pid == 0:
    os._exit(0)
open(sys.argv[1], "w").write(str(pid))   # never reaped: a zombie
time.sleep(600)
"""


def test_zombie_of_another_parent_counts_as_gone(spawn, tmp_path: Path) -> None:
    ready = tmp_path / "zombie"
    spawn([PYTHON, "-c", ZOMBIE_MAKER, str(ready)])
    zombie = psutil.Process(int(wait_for_file(ready)))
    wait_for(lambda: zombie.status() == psutil.STATUS_ZOMBIE, message="child to become a zombie")
    assert is_gone(zombie)
    [outcome] = stop_processes([zombie], grace_s=5)
    assert outcome.result is StopResult.ALREADY_GONE


DENIED_PROBE = r"""
import json, os, sys
import psutil
from procguard.proctree import stop_processes
target = psutil.Process(int(sys.argv[1]))   # looked up while still root
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(r)
    os.setgid(65534)
    os.setuid(65534)
    [o] = stop_processes([target], grace_s=0.2)
    os.write(w, json.dumps({"result": str(o.result), "detail": o.detail}).encode())
    os._exit(0)
os.close(w)
data = os.read(r, 4096)
os.waitpid(pid, 0)
print(data.decode())
"""


def test_eperm_is_reported_not_swallowed(spawn) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to another user")
    victim = spawn(SLEEPER)
    probe = spawn([PYTHON, "-c", DENIED_PROBE, str(victim.pid)])
    out, err = probe.communicate(timeout=60)
    assert probe.returncode == 0, err.decode()
    report = json.loads(out)
    assert report["result"] == "denied"
    assert "EPERM" in report["detail"]
    assert victim.poll() is None


def test_negative_grace_is_refused() -> None:
    with pytest.raises(ValueError, match="grace_s"):
        stop_processes([], grace_s=-1)
