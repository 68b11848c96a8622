"""The bad-input table of ``procguard run``: exit status 2, one line naming the value, no traceback.

Each row is a real ``procguard run`` invocation. Nothing may start: the
rows that would start something (a command, a manager) fail before it.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from .helpers import PROCGUARD, python_env

RUN = [*PROCGUARD, "run"]

#: (flags, text that must appear in the one line of stderr)
BAD_INPUT: list[tuple[list[str], str]] = [
    (["--bogus", "--", "true"], "--bogus"),
    (["--interval", "10x", "--", "true"], "'10x'"),
    (["--interval", "-5", "--", "true"], "'-5'"),
    (["--max-runtime", "abc", "--", "true"], "'abc'"),
    (["--max-runtime", "-1", "--", "true"], "'-1'"),
    (["--max-iterations", "2.5", "pkg.mod:fn"], "'2.5'"),
    (["--max-iterations", "-3", "pkg.mod:fn"], "'-3'"),
    (["--memory-limit", "12XB", "--", "true"], "'12XB'"),
    (["--memory-limit", "-100", "--", "true"], "'-100'"),
    (["--cpu-limit", "100000", "--", "true"], "'100000'"),
    (["--cpu-limit", "lots", "--", "true"], "'lots'"),
    (["--health-port", "70000", "--", "true"], "'70000'"),
    (["--health-port", "-1", "--", "true"], "'-1'"),
    (["--health-port", "http", "--", "true"], "'http'"),
    (["--health-host", "not-an-ip", "--", "true"], "'not-an-ip'"),
    (["--grace", "soon", "--", "true"], "'soon'"),
    (["--name", "bad name!", "--", "true"], "'bad name!'"),
    (["--max-failures", "-1", "pkg.mod:fn"], "'-1'"),
    (["--cpu-window", "0", "--", "true"], "'0'"),
    (["no_such_module_xyz:main"], "'no_such_module_xyz'"),
    (["os:no_such_function"], "'no_such_function'"),
    (["os:sep"], "not a function"),
    (["not-a-target"], "'not-a-target'"),
    ([], "no target"),
    (["os:getpid", "--", "true"], "not both"),
    (["--once", "--", "true"], "--once"),
    (["--max-iterations", "3", "--", "true"], "--max-iterations"),
    (["--heartbeat-timeout", "5s", "--", "true"], "--heartbeat-timeout"),
    (["--heartbeat-timeout", "-2", "pkg.mod:fn"], "'-2'"),
    (["--", "/nonexistent/program-xyz"], "'/nonexistent/program-xyz'"),
]


def run_bad(args: list[str], cwd: Path) -> tuple[int, str]:
    proc = subprocess.run(
        [*RUN, *args], capture_output=True, env=python_env(), cwd=cwd, timeout=60, check=False
    )
    return proc.returncode, proc.stderr.decode(errors="replace")


def assert_one_line_usage_error(status: int, err: str, needle: str) -> None:
    assert status == 2, f"exit {status}, stderr:\n{err}"
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got:\n{err}"
    assert "Traceback" not in err
    assert needle in lines[0], f"{needle!r} not named in: {lines[0]}"


@pytest.mark.parametrize(("args", "needle"), BAD_INPUT, ids=[" ".join(a) or "<none>" for a, _ in BAD_INPUT])
def test_bad_input_exits_2_with_one_line(args, needle, state_dir, tmp_path):
    status, err = run_bad(args, tmp_path)
    assert_one_line_usage_error(status, err, needle)


def test_a_target_that_raises_while_importing_is_bad_input(state_dir, tmp_path):
    (tmp_path / "broken_mod.py").write_text("raise RuntimeError('config missing')\n")
    status, err = run_bad(["broken_mod:main", "--health-port", "0"], tmp_path)
    assert_one_line_usage_error(status, err, "config missing")


@pytest.mark.parametrize("mode", ["function", "command"])
def test_health_port_taken_is_bad_input(mode, state_dir, tmp_path):
    (tmp_path / "quiet_mod.py").write_text("def main():\n    pass\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        target = ["quiet_mod:main"] if mode == "function" else ["--", "true"]
        status, err = run_bad(["--health-port", str(port), *target], tmp_path)
    assert_one_line_usage_error(status, err, str(port))


def test_unsafe_state_dir_is_bad_input(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    status, err = run_bad(["--state-dir", str(shared), "--health-port", "0", "--", "true"], tmp_path)
    assert_one_line_usage_error(status, err, str(shared))


def test_help_documents_every_exit_status(tmp_path):
    proc = subprocess.run([*RUN, "--help"], capture_output=True, env=python_env(), timeout=60, check=False)
    assert proc.returncode == 0
    text = proc.stdout.decode()
    from procguard.reasons import ExitStatus

    for status in set(ExitStatus) - {ExitStatus.CLEANUP_INCOMPLETE}:  # 4 is procguard cleanup's
        assert f"\n  {int(status):<4} " in text, f"exit status {int(status)} ({status.name}) not in --help"
    assert "130, 143" in text
