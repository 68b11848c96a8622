"""The one reader of /proc/PID/stat: parsing, and the same figures psutil reads."""

from __future__ import annotations

import os
import time
from typing import Any

import psutil

from procguard.procstat import CLOCK_TICKS, PAGE_SIZE, parse_stat, read_stat, start_ticks

from .helpers import PYTHON, wait_for

# A real line, with a command name that holds spaces and parentheses: fields are
# counted after the *last* ')'.
LINE = (
    b"4242 (evil ) (name) S 17 4242 4242 0 -1 4194560 1234 0 0 0 "
    b"250 75 0 0 20 0 3 0 987654 123456789 2560 18446744073709551615 1 1 0 0 0 0 0 "
    b"4096 0 0 0 0 17 1 0 0 0 0 0\n"
)


def test_parse_counts_fields_after_the_last_parenthesis() -> None:
    stat = parse_stat(LINE)
    assert stat is not None
    assert (stat.state, stat.ppid, stat.num_threads, stat.start_ticks) == ("S", 17, 3, 987654)
    assert (stat.utime_ticks, stat.stime_ticks, stat.cpu_ticks) == (250, 75, 325)
    assert stat.cpu_seconds == 325 / CLOCK_TICKS
    assert stat.rss_bytes == 2560 * PAGE_SIZE
    assert not stat.exited
    assert parse_stat(LINE.replace(b") S 17", b") Z 17")).exited  # type: ignore[union-attr]


def test_garbage_is_none() -> None:
    for data in (b"", b"no parenthesis here", b"1 (x) S 1 2", b"1 (x) S one 2 3 4 5 6 7 8 9 10 11 12 13"):
        assert parse_stat(data) is None


def test_read_stat_agrees_with_psutil(spawn: Any) -> None:
    proc = spawn([PYTHON, "-c", "import threading, time; threading.Thread(target=time.sleep, args=(60,)).start(); "
                  "print('ready', flush=True); time.sleep(60)"])
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    stat = read_stat(proc.pid)
    ps = psutil.Process(proc.pid)
    assert stat is not None
    assert stat.ppid == os.getpid() == ps.ppid()
    assert stat.num_threads == ps.num_threads() == 2
    assert abs(stat.rss_bytes - ps.memory_info().rss) < 1024 * 1024
    with open("/proc/stat") as f:
        btime = next(int(line.split()[1]) for line in f if line.startswith("btime"))
    assert abs(stat.start_ticks / CLOCK_TICKS + btime - ps.create_time()) < 0.02
    assert start_ticks(proc.pid) == stat.start_ticks


def test_an_unreaped_child_reads_as_exited_and_a_gone_one_as_none() -> None:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child ends at once
        os._exit(0)
    try:
        assert wait_for(lambda: (st := read_stat(pid)) is not None and st.exited, message="a zombie")
    finally:
        os.waitpid(pid, 0)
    deadline = time.monotonic() + 5
    while read_stat(pid) is not None and time.monotonic() < deadline:  # reaped: gone at once
        time.sleep(0.01)
    assert read_stat(pid) is None
    assert start_ticks(pid) is None
