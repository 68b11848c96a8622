"""ResourceSampler against real processes: another pid's tree, memory, CPU over a window."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import psutil
import pytest

from procguard.sampler import ResourceSampler

from .helpers import PYTHON, stop_process_tree, wait_for

HOG = Path(__file__).parent / "manager_workers" / "hog.py"
MB = 1024 * 1024


def start_hog(spawn: Any, *args: str) -> subprocess.Popen[bytes]:
    proc = spawn([PYTHON, str(HOG), *args])
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line == b"ready\n", (line, proc.poll())
    return proc


def test_rss_of_another_process(spawn: Any) -> None:
    proc = start_hog(spawn, "80")
    sample = ResourceSampler(proc.pid).sample()
    assert sample.pid == proc.pid
    assert 80 * MB <= sample.rss_bytes < 200 * MB
    assert sample.memory_bytes == sample.rss_bytes and sample.uss_bytes is None
    assert sample.num_children == 0 and sample.num_threads == 1
    assert sample.memory_percent == pytest.approx(sample.rss_bytes / psutil.virtual_memory().total * 100)
    # the same figure psutil reports, within the noise of a running interpreter
    assert abs(sample.root_rss_bytes - psutil.Process(proc.pid).memory_info().rss) < 4 * MB


def test_descendants_count_unless_excluded(spawn: Any) -> None:
    proc = start_hog(spawn, "20", "--children", "2", "--child-mb", "40")
    tree = ResourceSampler(proc.pid).sample()
    alone = ResourceSampler(proc.pid, include_children=False).sample()
    assert tree.num_children == 2
    assert sorted(tree.children) == sorted(c.pid for c in psutil.Process(proc.pid).children())
    assert alone.num_children == 0
    assert tree.rss_bytes - alone.rss_bytes >= 80 * MB  # both children's 40 MB
    assert alone.rss_bytes >= 20 * MB


def test_children_that_appear_later_are_found(spawn: Any) -> None:
    me = ResourceSampler(os.getpid(), scan_interval_s=0)  # scan the process table at every sample
    default = ResourceSampler(os.getpid())  # scans at most once a second
    before = me.sample().num_children
    default.sample()
    late = start_hog(spawn, "1")
    assert late.pid in me.sample().children
    assert me.sample().num_children == before + 1
    wait_for(lambda: late.pid in default.sample().children, timeout=5, message="discovery within a scan interval")
    stop_process_tree(late, grace=3)
    wait_for(lambda: late.pid not in me.sample().children, message="the stopped child to drop out")
    wait_for(lambda: late.pid not in default.sample().children, message="the stopped child to drop out")


def test_uss_when_asked(spawn: Any) -> None:
    proc = start_hog(spawn, "30")
    sample = ResourceSampler(proc.pid, use_uss=True).sample()
    assert sample.uss_bytes is not None and sample.uss_bytes >= 30 * MB
    assert sample.memory_bytes == sample.uss_bytes


def test_cpu_is_averaged_over_the_window(spawn: Any) -> None:
    burner = start_hog(spawn, "1", "--burn")
    idle = start_hog(spawn, "1")
    hot, cold = ResourceSampler(burner.pid, cpu_window_s=1.0), ResourceSampler(idle.pid, cpu_window_s=1.0)
    first = hot.sample()
    assert first.cpu_percent == 0.0 and first.cpu_window_s == 0.0  # one reading says nothing
    cold.sample()

    def window_full() -> bool:
        return hot.sample().cpu_window_s >= 1.0 and cold.sample().cpu_window_s >= 1.0

    wait_for(window_full, interval=0.1, message="a full CPU window")
    hot_s, cold_s = hot.sample(), cold.sample()
    assert hot_s.cpu_window_s < 1.5  # the window slides, it does not grow without bound
    assert hot_s.cpu_percent > 25, hot_s  # a busy loop (shared cores: allow for contention)
    assert cold_s.cpu_percent < 10, cold_s


def test_a_gone_process_raises(spawn: Any) -> None:
    proc = start_hog(spawn, "1")
    sampler = ResourceSampler(proc.pid)
    stop_process_tree(proc, grace=3)
    with pytest.raises(psutil.NoSuchProcess):
        sampler.sample()
    with pytest.raises(psutil.NoSuchProcess):
        ResourceSampler(proc.pid)


def test_psutil_backend_agrees_with_procfs(spawn: Any) -> None:
    proc = start_hog(spawn, "40", "--children", "1", "--child-mb", "30")
    fast = ResourceSampler(proc.pid, backend="procfs").sample()
    portable = ResourceSampler(proc.pid, backend="psutil").sample()
    assert fast.num_children == portable.num_children == 1
    assert fast.num_threads == portable.num_threads
    assert abs(fast.rss_bytes - portable.rss_bytes) < 4 * MB
