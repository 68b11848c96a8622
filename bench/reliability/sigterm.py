"""Row 9: SIGTERM while the example collector is writing; every iteration that began is stored whole.

One analyticbot API serves the whole row. Each round starts the example's
collector (``examples.analyticbot.collector:collect``, iterations back to
back, each row's insert slowed by ``ANALYTICBOT_WRITE_DELAY_MS``) under
``procguard run`` (even rounds) or as the ``run =`` worker of a foreground
``procguard up`` (odd rounds), waits for an iteration to begin, sends
SIGTERM a random moment into it (to the runner, or to the supervisor, which
passes the stop on), and then reads the collector's SQLite store.

A round fails when the stop did not end in the documented status, when an
iteration that began (its "collecting" log line) has no "stored run" line,
or when the store's runs for the round's user differ from the stored lines
or hold a run with fewer channel rows than it expected (a half-written run).
"""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers import free_port, python_env, wait_for

from .harness import PROCGUARD, PYTHON, ROOT, RowResult, Tally, stop

TARGET = "examples.analyticbot.collector:collect"
WRITE_DELAY_MS = 40
CHANNELS = 5
BEGUN, STORED, STOPPING = "collecting for user", "stored run", ") stopping: "


class Lines:
    """A child's output lines, read in a thread so the round can wait for one."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    def count(self, needle: str) -> int:
        return sum(needle in line for line in list(self.lines))

    def last(self, needle: str) -> int:
        found = [i for i, line in enumerate(list(self.lines)) if needle in line]
        return found[-1] if found else -1

    def join(self) -> None:
        self._thread.join(timeout=30)


@dataclass
class Records:
    """What the rounds of the row stored and lost."""

    begun: int = 0
    stored: int = 0
    lost: int = 0
    half_written: int = 0
    mid_iteration: int = 0
    rounds: int = 0
    statuses: dict[str, int] = field(default_factory=dict)


def start_api(data: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    api = subprocess.Popen([PYTHON, "-m", "examples.analyticbot.api", "--port", str(port), "--data-dir", str(data)],
                           env=python_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    from .hostile_http import probe

    wait_for(lambda: api.poll() is not None or probe(port, "/health")[0] == 200, timeout=60,
             message="the analyticbot API")
    if api.poll() is not None:
        msg = f"the analyticbot API exited {api.returncode}"
        raise RuntimeError(msg)
    return api, url


def stored_runs(store: Path, user: int) -> list[tuple[int, int, int]]:
    """(run_id, expected_channels, channel rows stored) of every run of ``user``."""
    if not store.exists():
        return []
    conn = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute(
            "SELECT r.run_id, r.expected_channels, (SELECT COUNT(*) FROM channel_stats s WHERE s.run_id = r.run_id)"
            " FROM collection_runs r WHERE r.user_id = ? ORDER BY r.run_id", (user,)).fetchall()
    finally:
        conn.close()


STACK = """\
[project]
name = "sigterm{index}"

[defaults]
grace = "30s"
max_runtime = 0

[workers.collector]
run = "{target}"
interval = 0
env = {{ ANALYTICBOT_API_URL = "{url}", ANALYTICBOT_DATA_DIR = "{data}", ANALYTICBOT_USER_ID = "{index}", \
ANALYTICBOT_WRITE_DELAY_MS = "{delay}" }}
"""


def _launch(index: int, work: Path, url: str, data: Path, delay_ms: int) -> tuple[list[str], dict[str, str], int]:
    """argv, environment, and the exit status a graceful stop by SIGTERM must end with."""
    env = python_env(PROCGUARD_STATE_DIR=str(work / f"state-{index}"), PROCGUARD_LOG_LEVEL="INFO",
                     ANALYTICBOT_API_URL=url, ANALYTICBOT_DATA_DIR=str(data), ANALYTICBOT_USER_ID=str(index),
                     ANALYTICBOT_WRITE_DELAY_MS=str(delay_ms))
    if index % 2 == 0:
        return ([*PROCGUARD, "run", TARGET, "--name", f"collector-{index}", "--interval", "0", "--max-runtime", "0",
                 "--health-port", "0"], env, 128 + signal.SIGTERM)
    config = work / f"stack-{index}.toml"
    config.write_text(STACK.format(index=index, target=TARGET, url=url, data=data, delay=delay_ms))
    return [*PROCGUARD, "up", "-c", str(config)], env, 0


def sigterm_round(index: int, work: Path, url: str, data: Path, records: Records, rng: random.Random, *,
                  stop_signal: signal.Signals = signal.SIGTERM, delay_ms: int = WRITE_DELAY_MS) -> list[str]:
    """One collector stopped by ``stop_signal`` a random moment into an iteration; its records checked."""
    argv, env, expected = _launch(index, work, url, data, delay_ms)
    proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines = Lines(proc)
    try:
        wait_for(lambda: lines.count(BEGUN) >= 2 or proc.poll() is not None, timeout=60,
                 message=lambda: "a second iteration to begin:\n" + "\n".join(lines.lines[-20:]))
        # somewhere inside this iteration: the fetch takes ~10 ms, the write CHANNELS x delay_ms
        time.sleep(rng.uniform(0.0, CHANNELS * delay_ms / 1000))
        proc.send_signal(stop_signal)
        status = proc.wait(timeout=90)
        lines.join()
    finally:
        stop(proc)
        if proc.stdout is not None:
            proc.stdout.close()
    begun, said_stored = lines.count(BEGUN), lines.count(STORED)
    runs = stored_runs(data / "collector.sqlite3", index)
    half = [run for run in runs if run[2] != run[1] or run[1] != CHANNELS]
    records.rounds += 1
    records.begun += begun
    records.stored += len(runs) - len(half)
    records.lost += max(0, begun - (len(runs) - len(half)))
    records.half_written += len(half)
    records.statuses[str(status)] = records.statuses.get(str(status), 0) + 1
    stop_line = lines.last(STOPPING)
    if lines.last(BEGUN) < stop_line < lines.last(STORED):
        records.mid_iteration += 1
    problems = []
    if status != expected:
        problems.append(f"exit status {status}, expected {expected}")
    if begun == 0 or begun != said_stored or begun != len(runs):
        problems.append(f"{begun} iterations began, {said_stored} said stored, {len(runs)} runs in the store")
    if half:
        problems.append(f"half-written runs (run id, expected, stored): {half}")
    if problems:
        problems.append("last lines: " + " | ".join(lines.lines[-6:]))
    return problems


def run_sigterm(rounds: int, work: Path) -> RowResult:
    started = time.monotonic()
    tally, records = Tally(), Records()
    data = work / "data"
    data.mkdir()
    api, url = start_api(data)
    rng = random.Random(9)
    try:
        for index in range(rounds):
            tally.attempt(lambda index=index: sigterm_round(index, work, url, data, records, rng))
    finally:
        stop(api)
    figures = (f"{records.lost} lost iterations and {records.half_written} half-written runs of {records.begun} "
               f"iterations begun; the SIGTERM landed inside an iteration in {records.mid_iteration} of "
               f"{records.rounds} rounds")
    return RowResult(9, "SIGTERM while the analyticbot collector writes its batch (each row's insert slowed to "
                     f"{WRITE_DELAY_MS} ms): `procguard run` and `procguard up` in turn, then the collector's SQLite "
                     "store checked", f"{tally.tried} SIGTERMs", tally.failed, figures, time.monotonic() - started,
                     tally.problems)
