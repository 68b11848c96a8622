"""CLI habits people bring from other tools, each on a real stack and real command lines.

Colours on a terminal (a real pty) and none into a pipe or with NO_COLOR;
``status``'s CPU column and name filter; ``ps`` columns aligned for long
names; ``history --json`` rows with the same keys; ``logs supervisor``;
the worker name ``supervisor`` refused.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import time
from pathlib import Path
from typing import Any

from .helpers import PROCGUARD, free_port, python_env, wait_for
from .supervisor_workers.stackkit import Stack, worker_cmd, write_config

ESC = "\033["
ANSI = re.compile(r"\033\[[0-9;]*m")
LONG = "a-worker-with-a-rather-long-name-for-the-columns"


def in_pty(argv: list[str], env: dict[str, str], timeout: float = 60) -> tuple[int, str]:
    """Run ``argv`` with stdin, stdout and stderr on a new pseudo-terminal: (exit status, output)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every holder of the terminal's other end has closed it
                break
            if not data:
                break
            chunks.append(data)
        status = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return status, b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")


def _stack(tmp_path: Path, state_dir: Path, spawn: Any) -> Stack:
    config = write_config(tmp_path, {
        "api": {"command": worker_cmd("ticker.py", tmp_path / "api")},
        LONG: {"command": worker_cmd("ticker.py", tmp_path / "long")},
        "bot": {"command": worker_cmd("crash.py", tmp_path / "crash", 1), "backoff_initial": "0.05s",
                "start_limit": 2},
    })
    stack = Stack(config, state_dir, spawn, tuning="sample_interval_s=0.2")
    stack.up()
    stack.wait_state("api", "running")
    stack.wait_state(LONG, "running")
    stack.wait_state("bot", "fatal")
    return stack


def _cli_env(stack: Stack, **extra: str) -> dict[str, str]:
    env = {**stack.env, "PROCGUARD_LOG_LEVEL": "WARNING", "TERM": "xterm"}
    env.pop("NO_COLOR", None)
    env.pop("FORCE_COLOR", None)
    env.update(extra)
    return env


def test_status_colours_on_a_terminal_only(tmp_path: Path, state_dir: Path, spawn: Any) -> None:
    stack = _stack(tmp_path, state_dir, spawn)
    argv = [*PROCGUARD, "status", "-c", str(stack.config)]

    status, shown = in_pty(argv, _cli_env(stack))
    assert status == 1, shown  # bot is fatal
    assert f"{ESC}32mrunning{ESC}0m" in shown and f"{ESC}1;31mfatal{ESC}0m" in shown, repr(shown)
    # painted after the layout: without the codes, every row is as aligned as the plain table
    piped = subprocess.run(argv, env=_cli_env(stack), capture_output=True, text=True, check=False)
    assert ESC not in piped.stdout and ESC not in piped.stderr
    assert _same_layout(ANSI.sub("", shown), piped.stdout)

    status, shown = in_pty(argv, _cli_env(stack, NO_COLOR="1"))
    assert status == 1 and ESC not in shown and "fatal" in shown
    status, shown = in_pty(argv, _cli_env(stack, TERM="dumb"))
    assert ESC not in shown
    forced = subprocess.run(argv, env=_cli_env(stack, FORCE_COLOR="1"), capture_output=True, text=True,
                            check=False)
    assert f"{ESC}1;31mfatal{ESC}0m" in forced.stdout
    forced = subprocess.run(argv, env=_cli_env(stack, FORCE_COLOR="1", NO_COLOR="1"), capture_output=True,
                            text=True, check=False)
    assert ESC not in forced.stdout  # NO_COLOR wins

    # errors are red on a terminal, plain into a pipe, one line either way
    bad = [*PROCGUARD, "stop", "nosuch", "-c", str(stack.config)]
    status, shown = in_pty(bad, _cli_env(stack))
    assert status == 2 and shown.startswith(f"{ESC}31mprocguard stop: ") and shown.count("\n") == 1, shown
    piped = subprocess.run(bad, env=_cli_env(stack), capture_output=True, text=True, check=False)
    assert piped.returncode == 2 and piped.stderr.startswith("procguard stop: ") and ESC not in piped.stderr
    status, shown = in_pty([*PROCGUARD, "status", "--bogus"], _cli_env(stack))
    assert status == 2 and shown.startswith(f"{ESC}31mprocguard status: unrecognized"), shown


def _same_layout(a: str, b: str) -> bool:
    """Both tables have their columns at the same places (header words at the same offsets)."""
    head_a = next(line for line in a.splitlines() if line.startswith("NAME"))
    head_b = next(line for line in b.splitlines() if line.startswith("NAME"))
    return head_a == head_b


def _columns(table: str) -> tuple[str, list[str]]:
    lines = [line for line in table.splitlines() if line.strip()]
    header = next(i for i, line in enumerate(lines) if line.startswith("NAME"))
    return lines[header], lines[header + 1 :]


def test_status_cpu_column_name_filter_and_alignment(tmp_path: Path, state_dir: Path, spawn: Any) -> None:
    stack = _stack(tmp_path, state_dir, spawn)
    stack.wait_worker("api", lambda w: w["cpu_percent"] is not None, what="a CPU figure")
    result = stack.cli("status")
    assert result.returncode == 1, result.stderr
    header, rows = _columns(result.stdout)
    assert header.split() == ["NAME", "STATE", "PID", "UPTIME", "RESTARTS", "MEMORY", "CPU", "LAST", "EXIT"]
    cpu_at = header.index("CPU")
    by_name = {row.split()[0]: row for row in rows}
    assert set(by_name) == {"api", LONG, "bot"}
    # every column starts where its header does, the long name notwithstanding
    for name, row in by_name.items():
        for title in ("STATE", "PID", "CPU", "LAST EXIT"):
            at = header.index(title)
            assert row[at - 2 : at] == "  " and row[at] != " ", (name, title, row)
    assert re.fullmatch(r"\d+\.\d%", by_name["api"][cpu_at:].split()[0]), by_name["api"]
    assert by_name["bot"][cpu_at:].split()[0] == "-"  # no process, no figure

    only = stack.cli("status", "api", "b*")
    assert only.returncode == 1
    assert sorted(row.split()[0] for row in _columns(only.stdout)[1]) == ["api", "bot"]
    api = stack.cli("status", "api", "--json")
    assert api.returncode == 0 and [w["name"] for w in json.loads(api.stdout)] == ["api"]
    unknown = stack.cli("status", "nosuch")
    assert unknown.returncode == 2 and unknown.stderr.count("\n") == 1 and "nosuch" in unknown.stderr


def test_history_json_rows_have_the_same_keys(tmp_path: Path, state_dir: Path, spawn: Any) -> None:
    stack = _stack(tmp_path, state_dir, spawn)
    rows = json.loads(stack.cli("history", "--json", "-n", "0").stdout)
    kinds = {row["event"] for row in rows}
    assert kinds == {"start", "stop"}, rows
    keys = {tuple(sorted(row)) for row in rows}
    assert len(keys) == 1, keys
    assert "peak_memory_mb" in keys.pop()
    start = next(row for row in rows if row["event"] == "start")
    assert start["peak_memory_mb"] is None and start["reason"] is None


def test_logs_supervisor_is_the_supervisors_own_log(tmp_path: Path, state_dir: Path, spawn: Any) -> None:
    stack = _stack(tmp_path, state_dir, spawn)
    # in the foreground the supervisor logs to its terminal: said in one line, not 'no such worker'
    foreground = stack.cli("logs", "supervisor")
    assert foreground.returncode == 1 and foreground.stderr.count("\n") == 1
    assert "without --detach logs to the terminal" in foreground.stderr, foreground.stderr
    stack.cli("down")
    wait_for(lambda: stack.proc is not None and stack.proc.poll() is not None, message="the supervisor to exit")
    stack.proc = None  # from here on the supervisor is a daemon

    detached = stack.cli("up", "-d")
    assert detached.returncode == 0, detached.stderr
    try:
        stack.wait_state("bot", "fatal")
        stack.wait_state("api", "running")
        own = stack.cli("logs", "supervisor", "-n", "500")
        assert own.returncode == 0, own.stderr
        assert "bot" in own.stdout and "tick from" not in own.stdout and " | " not in own.stdout
        # among workers: interleaved, each line behind its name
        wait_for((tmp_path / "api").exists, message="api ticking")
        both = stack.cli("logs", "supervisor", "api", "-n", "500")
        assert both.returncode == 0, both.stderr
        prefixes = {line.split(" | ", 1)[0].strip() for line in both.stdout.splitlines()}
        assert prefixes == {"supervisor", "api"}, prefixes
        # no NAME: the workers, as before
        every = stack.cli("logs", "-n", "500")
        assert "supervisor |" not in every.stdout and "api" in every.stdout
    finally:
        down = stack.cli("down")
    assert down.returncode == 0, down.stderr
    # a stack that has stopped: its supervisor's log is still there
    after = subprocess.run([*PROCGUARD, "logs", "supervisor", "-n", "5"], env=_cli_env(stack),
                           capture_output=True, text=True, check=False, cwd=tmp_path)
    assert after.returncode == 0 and after.stdout.strip(), after.stderr


def test_a_worker_named_supervisor_is_refused(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"supervisor": {"command": "sleep 60"}})
    result = subprocess.run([*PROCGUARD, "check", "-c", str(config)], env=python_env(), capture_output=True,
                            text=True, check=False)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert "workers.supervisor" in result.stderr and "procguard logs supervisor" in result.stderr


def test_ps_columns_stay_aligned_for_long_names(tmp_path: Path, state_dir: Path, spawn: Any) -> None:
    env = python_env(PROCGUARD_STATE_DIR=str(state_dir))
    names = {"short": "0", "an-instance-name-much-longer-than-twenty-characters": str(free_port())}
    for name, port in names.items():
        spawn([*PROCGUARD, "run", "--name", name, "--health-port", port, "--", "sleep", "60"], env=env,
              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def listed() -> str | None:
        out = subprocess.run([*PROCGUARD, "ps"], env=env, capture_output=True, text=True, check=False).stdout
        return out if all(f"{name} " in out for name in names) and "healthy" in out else None

    header, rows = _columns(wait_for(listed, message="both instances in ps"))
    assert len(rows) == 2
    for title in ("STATE", "HEALTH", "COMMAND"):  # left-aligned columns start under their header
        at = header.index(title)
        assert all(row[at - 2 : at] == "  " and row[at] != " " for row in rows), (title, header, rows)
    for title in ("PID", "UPTIME", "MEMORY"):  # numbers end under their header's end
        end = header.index(title) + len(title)
        assert all(row[end - 1] != " " and row[end] == " " for row in rows), (title, header, rows)
