"""procguard logs of several workers: interleaved in time order behind their names, -n, --since, -f.

The rules (pure) first, then a real stack whose workers print numbered lines.
"""

from __future__ import annotations

import itertools
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from procguard.errors import UsageError
from procguard.supervisor.logview import Prefixer, merge, since_stamp, stamp_of

from .helpers import PROCGUARD, wait_for
from .supervisor_workers.stackkit import Stack, worker_cmd, write_config

FAST = "start_period_s=0.3,sample_interval_s=0.2"


def test_since_reads_a_duration_or_a_time() -> None:
    now = time.mktime((2026, 11, 30, 9, 42, 4, 0, 0, -1)) + 0.5
    assert since_stamp("10m", now=now) == b"2026-11-30T09:32:04.500"
    assert since_stamp("2026-11-30T09:42", now=now) == b"2026-11-30T09:42:00.000"
    assert since_stamp("2026-11-30 09:42:04.25") == b"2026-11-30T09:42:04.250"
    with pytest.raises(UsageError, match="--since: 'yesterday' is not a duration or a time"):
        since_stamp("yesterday")


def test_logs_interleave_in_time_order_each_log_keeping_its_own_order() -> None:
    api = [b"2026-11-30T09:00:00.100 a1", b"continued without a stamp", b"2026-11-30T09:00:00.300 a2"]
    bot = [b"2026-11-30T09:00:00.200 b1", b"2026-11-30T09:00:00.400 b2"]
    merged = merge([("api", api), ("bot", bot)], lines=None)
    assert [line.split()[-1] for _, line in merged] == [b"a1", b"stamp", b"b1", b"a2", b"b2"]
    assert [name for name, _ in merge([("api", api), ("bot", bot)], lines=2)] == ["api", "bot"]
    since = merge([("api", api), ("bot", bot)], lines=None, since=b"2026-11-30T09:00:00.250")
    assert [line.split()[-1] for _, line in since] == [b"a2", b"b2"]
    assert merge([("api", api)], lines=0) == []
    assert stamp_of(b"2026-11-30T09:00:00 old line") == b"2026-11-30T09:00:00"


def test_prefixes_align_names_and_colour_only_when_asked() -> None:
    plain = Prefixer(["api", "collector"], colour=False)
    assert plain("api", b"x") == b"api       | x\n"
    assert plain("collector", b"y") == b"collector | y\n"
    coloured = Prefixer(["api"], colour=True)
    assert coloured("api", b"x").startswith(b"\x1b[")


_PREFIXED = re.compile(rb"(alpha|beta |gamma) \| (\S+) (alpha|beta|gamma) (\d+)")


def _parsed(output: bytes) -> list[tuple[str, bytes, int]]:
    """(worker, stamp, count) of each prefixed line a sayer printed (procguard's own notes left out)."""
    found = []
    for line in output.splitlines():
        match = _PREFIXED.fullmatch(line)
        if match:
            assert match.group(1).strip() == match.group(3)  # each line behind its own worker's name
            found.append((match.group(3).decode(), match.group(2), int(match.group(4))))
    return found


def test_logs_of_several_workers_interleave_in_time_order(tmp_path: Path, state_dir: Path, spawn: Any) -> None:
    config = write_config(tmp_path, {
        "alpha": {"command": worker_cmd("sayer.py", "alpha", 0.05)},
        "beta": {"command": worker_cmd("sayer.py", "beta", 0.07)},
        "gamma": {"command": worker_cmd("sayer.py", "gamma", 0.3)},
    }, defaults={"grace": "5s"})
    stack = Stack(config, state_dir, spawn, tuning=FAST)
    stack.up()
    for name in ("alpha", "beta", "gamma"):
        stack.wait_state(name, "running")

    def logged(*args: str) -> bytes:
        result = stack.cli("logs", *args)
        assert result.returncode == 0, result.stderr
        return result.stdout.encode()

    wait_for(lambda: {w for w, _, n in _parsed(logged("-n", "200")) if n >= 25} >= {"alpha", "beta"},
             message="25 lines from alpha and from beta")
    everything = logged("-n", "40")
    assert len(everything.splitlines()) == 40
    entries = _parsed(everything)
    assert {w for w, _, _ in entries} >= {"alpha", "beta"}
    assert [s for _, s, _ in entries] == sorted(s for _, s, _ in entries), "not in time order"
    for name in ("alpha", "beta"):
        counts = [n for w, _, n in entries if w == name]
        assert counts == sorted(counts) and len(counts) > 3
    switches = sum(1 for a, b in itertools.pairwise(entries) if a[0] != b[0])
    assert switches >= 4, "the two logs are not interleaved"
    assert len(logged("-n", "5").splitlines()) == 5

    chosen = _parsed(logged("al*", "beta", "-n", "50"))
    assert {w for w, _, _ in chosen} == {"alpha", "beta"}, "a worker that was not named is shown"
    assert logged("alpha", "-n", "3").count(b" | ") == 0  # one worker: its lines as they are
    assert logged("--since", "2099-01-01T00:00") == b""
    so_far = len(logged("-n", "500").splitlines())  # all of them: the logs only grow from here
    assert len(logged("--since", "1h").splitlines()) >= so_far

    follower = stack.spawn([*PROCGUARD, "logs", "-f", "-n", "0", "-c", str(stack.config)], env=stack.env)
    assert follower.stdout is not None
    seen: list[bytes] = []
    reader = threading.Thread(target=lambda: seen.extend(iter(follower.stdout.readline, b"")), daemon=True)
    reader.start()
    last = {w: n for w, _, n in _parsed(logged("-n", "200"))}
    wait_for(lambda: {w for w, _, n in _parsed(b"".join(seen)) if n > last.get(w, 0)} >= {"alpha", "beta"},
             message=lambda: f"new lines of alpha and beta through logs -f: {b''.join(seen)[-500:]!r}")
    follower.terminate()
    follower.wait(timeout=10)
    reader.join(timeout=5)
