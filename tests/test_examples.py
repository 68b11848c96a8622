"""The analyticbot example stack: real API, collector, bot and demo processes.

The centre piece is the collector's store under fire: 50 collectors are
each stopped with SIGTERM in the middle of an iteration, and the store must
hold every iteration that began (0 lost) and no partial run (0 half-written).
"""

from __future__ import annotations

import ast
import json
import random
import signal
import sqlite3
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from procguard.reasons import ExitStatus

from .helpers import PROCGUARD, PYTHON, free_port, python_env, read_output, stop_process_tree, wait_for

EXPECTED_CHANNELS = 5


class LineReader:
    """Collects a child's stderr lines in a thread, so a test can wait on one without blocking."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    def count(self, needle: str) -> int:
        return sum(needle in line for line in list(self.lines))

    def index(self, needle: str, *, last: bool = False) -> int:
        found = [i for i, line in enumerate(list(self.lines)) if needle in line]
        return (found[-1] if last else found[0]) if found else -1

    def join(self) -> str:
        self._thread.join(timeout=30)
        return "\n".join(self.lines)


def get_json(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One analyticbot API for the module; stopped (with its tree) at the end even on failure."""
    data_dir = tmp_path_factory.mktemp("api-data")
    port = free_port()
    proc = subprocess.Popen(
        [PYTHON, "-m", "examples.analyticbot.api", "--port", str(port), "--data-dir", str(data_dir)],
        env=python_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"api died:\n{read_output(proc)}")
            try:
                return get_json(f"{url}/health")[0] == 200
            except OSError:
                return False

        wait_for(up, message="the API's /health")
        yield url
    finally:
        stop_process_tree(proc, grace=5)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def store_runs(store: Path) -> list[tuple[int, int, int, int, int]]:
    """(run_id, user_id, pid, expected_channels, rows actually stored) for every stored run."""
    conn = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute(
            "SELECT r.run_id, r.user_id, r.pid, r.expected_channels,"
            " (SELECT COUNT(*) FROM channel_stats s WHERE s.run_id = r.run_id)"
            " FROM collection_runs r ORDER BY r.run_id"
        ).fetchall()
    finally:
        conn.close()


def test_api_serves_channel_statistics(api):
    status, body = get_json(f"{api}/api/channels")
    assert status == 200 and len(body["channels"]) == EXPECTED_CHANNELS
    channel = body["channels"][0]["id"]
    status, first = get_json(f"{api}/api/channels/{channel}/stats")
    assert status == 200
    assert set(first) == {"channel_id", "title", "subscribers", "views", "posts", "as_of"}
    _, second = get_json(f"{api}/api/channels/{channel}/stats")
    assert second["views"] > first["views"]  # the channel is "active"
    assert get_json(f"{api}/api/channels/nope/stats")[0] == 404
    assert get_json(f"{api}/nowhere")[0] == 404


def test_collector_runs_with_the_seeds_command_line(spawn, state_dir, tmp_path, api):
    port = free_port()
    proc = spawn([
        PYTHON, "-m", "examples.analyticbot.collector",
        "--interval", "10", "--max-runtime", "24", "--memory-limit", "2048", "--cpu-limit", "80",
        "--health-port", str(port), "--user-id", "123", "--once",
        "--api-url", api, "--data-dir", str(tmp_path),
    ])
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    runs = store_runs(tmp_path / "collector.sqlite3")
    assert len(runs) == 1
    _run_id, user_id, pid, expected, stored = runs[0]
    assert (user_id, pid, expected, stored) == (123, proc.pid, EXPECTED_CHANNELS, EXPECTED_CHANNELS)


def test_collector_under_procguard_run_function_mode(spawn, state_dir, tmp_path, api):
    env = python_env(ANALYTICBOT_API_URL=api, ANALYTICBOT_DATA_DIR=str(tmp_path), ANALYTICBOT_USER_ID="7")
    proc = spawn([*PROCGUARD, "run", "examples.analyticbot.collector:collect", "--interval", "0",
                  "--max-iterations", "3", "--health-port", "0"], env=env)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == ExitStatus.MAX_ITERATIONS, err.decode()
    runs = store_runs(tmp_path / "collector.sqlite3")
    assert [(r[1], r[3], r[4]) for r in runs] == [(7, EXPECTED_CHANNELS, EXPECTED_CHANNELS)] * 3


def _collector(spawn, api: str, data_dir: Path, index: int) -> subprocess.Popen[bytes]:
    return spawn([
        PYTHON, "-m", "examples.analyticbot.collector",
        "--interval", "0", "--max-runtime", "0", "--health-port", "0", "--write-delay-ms", "15",
        "--name", f"collector-{index}", "--user-id", str(index),
        "--api-url", api, "--data-dir", str(data_dir),
    ])


@pytest.mark.slow
def test_sigterm_mid_iteration_50_times_loses_nothing(spawn, state_dir, tmp_path, api):
    """50 collectors, each SIGTERMed mid-iteration: every begun iteration is stored whole."""
    rng = random.Random(4)
    store = tmp_path / "collector.sqlite3"
    cycles, batch = 50, 5
    begun_total = stored_total = mid_iteration = 0
    for first in range(0, cycles, batch):
        procs = [_collector(spawn, api, tmp_path, i) for i in range(first, first + batch)]
        readers = [LineReader(p) for p in procs]
        for proc, reader in zip(procs, readers, strict=True):
            wait_for(
                lambda r=reader, p=proc: r.count("collecting for user") or p.poll() is not None,
                message=lambda r=reader: "an iteration to begin:\n" + "\n".join(r.lines),
            )
            time.sleep(rng.uniform(0.0, 0.06))  # somewhere inside the ~100 ms iteration
            proc.send_signal(signal.SIGTERM)
        for proc, reader in zip(procs, readers, strict=True):
            status = proc.wait(timeout=60)
            log = reader.join()
            assert status == 128 + signal.SIGTERM, log
            begun, stored = reader.count("collecting for user"), reader.count("stored run")
            assert begun >= 1 and begun == stored, f"lost an iteration (pid {proc.pid}):\n{log}"
            begun_total += begun
            stored_total += stored
            stop_line = reader.index("stopping: signal")
            if reader.index("collecting for user", last=True) < stop_line < reader.index("stored run", last=True):
                mid_iteration += 1
    runs = store_runs(store)
    half_written = [r for r in runs if r[3] != EXPECTED_CHANNELS or r[4] != r[3]]
    assert half_written == []
    assert len(runs) == stored_total == begun_total
    assert {r[1] for r in runs} == set(range(cycles))  # every collector stored its work
    # The signals did land inside iterations (the point of the exercise), not only between them.
    assert mid_iteration >= cycles // 5, f"only {mid_iteration} of {cycles} stops were mid-iteration"


@pytest.mark.slow
def test_sigkill_mid_write_leaves_no_half_written_run(spawn, state_dir, tmp_path, api):
    """SIGKILL gives no chance to finish: the in-flight run is lost, but never stored in part."""
    rng = random.Random(9)
    procs = [_collector(spawn, api, tmp_path, i) for i in range(6)]
    readers = [LineReader(p) for p in procs]
    for proc, reader in zip(procs, readers, strict=True):
        wait_for(lambda r=reader: r.count("collecting for user") >= 2, message="a second iteration to begin")
        time.sleep(rng.uniform(0.02, 0.09))  # inside the write phase, most of the time
        proc.kill()
        proc.wait(timeout=30)
    runs = store_runs(tmp_path / "collector.sqlite3")
    assert runs, "nothing stored at all"
    assert [r for r in runs if r[4] != r[3] or r[3] != EXPECTED_CHANNELS] == []


def test_bot_supervised_from_outside(spawn, state_dir, tmp_path, api):
    collector = spawn([PYTHON, "-m", "examples.analyticbot.collector", "--once", "--health-port", "0",
                       "--api-url", api, "--data-dir", str(tmp_path)])
    assert collector.wait(timeout=60) == 0, read_output(collector)
    bot = spawn([*PROCGUARD, "run", "--name", "bot", "--health-port", "0", "--grace", "10s", "--",
                 PYTHON, "-m", "examples.analyticbot.bot", "--every", "0.2", "--data-dir", str(tmp_path)])
    report_file, report_text = tmp_path / "report.json", tmp_path / "report.txt"
    report = wait_for(  # the bot writes report.json, then report.txt: wait for both
        lambda: report_text.exists() and json.loads(report_file.read_text()),
        message=lambda: "a report" + (f"\n{read_output(bot)}" if bot.poll() is not None else ""),
    )
    assert report["runs"] == 1 and len(report["channels"]) == EXPECTED_CHANNELS
    assert "subscribers" in report_text.read_text()
    bot.send_signal(signal.SIGTERM)
    out, err = bot.communicate(timeout=60)
    assert bot.returncode == 0, err.decode()  # the bot's own status after a forwarded SIGTERM
    assert b"stopped after" in out
    json.loads(report_file.read_text())  # never half a report


def test_bot_has_no_procguard_inside():
    here = Path(__file__).resolve().parent.parent / "examples" / "analyticbot"
    for module in ("bot.py", "settings.py"):  # the bot and what it imports
        tree = ast.parse((here / module).read_text())
        imported = [
            alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
        ] + [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
        assert not [name for name in imported if name.startswith("procguard")], module


@pytest.mark.slow
def test_demo_runs_and_stops_cleanly(spawn, state_dir, tmp_path):
    proc = spawn(
        [PYTHON, "-m", "examples.analyticbot.demo", "--duration", "6", "--free-ports", "--interval", "1s",
         "--report-every", "0.5", "--data-dir", str(tmp_path / "data")],
        cwd=tmp_path,
    )
    out, err = proc.communicate(timeout=120)
    text = out.decode() + err.decode()
    assert proc.returncode == 0, text
    assert "Where to look" in text and "/health" in text
    runs = store_runs(tmp_path / "data" / "collector.sqlite3")
    assert runs and all(r[4] == r[3] == EXPECTED_CHANNELS for r in runs)
    report = json.loads((tmp_path / "data" / "report.json").read_text())
    assert len(report["channels"]) == EXPECTED_CHANNELS
