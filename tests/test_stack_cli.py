"""The stack commands as a user types them: names, exit statuses, output."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .helpers import PROCGUARD, PYTHON, python_env, wait_for, wait_for_file
from .supervisor_workers.stackkit import Stack, worker_cmd, write_config

FAST = "start_period_s=0.3,sample_interval_s=0.2"
STATUS_KEYS = {"name", "state", "pid", "restarts", "uptime_seconds", "memory_mb", "last_exit"}


@pytest.fixture
def stack(tmp_path: Path, state_dir: Path, spawn: Any) -> Stack:
    config = write_config(tmp_path, {
        "api": {"command": worker_cmd("slowstop.py", tmp_path / "api", 0)},
        "worker": {"command": worker_cmd("ticker.py", tmp_path / "ticks")},
    }, defaults={"grace": "5s"}, log_max_bytes=1500, log_backups=1)
    return Stack(config, state_dir, spawn, tuning=FAST)


@pytest.mark.parametrize("argv", [
    ["up", "nope"], ["up", "api", "nope"], ["stop", "nope"], ["start", "nope"], ["restart", "nope"],
    ["logs", "nope"], ["history", "--worker", "nope"],
])
def test_unknown_worker_name_is_a_usage_error_listing_known_ones(stack: Stack, argv: list[str]) -> None:
    result = stack.cli(*argv)
    assert result.returncode == 2
    assert "unknown worker 'nope'" in result.stderr
    assert "use one of: api, worker" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_commands_without_a_supervisor(stack: Stack) -> None:
    for command in (["status"], ["status", "--json"], ["stop", "api"], ["start", "api"], ["restart", "api"]):
        result = stack.cli(*command)
        assert result.returncode == 3, (command, result.stderr)
        assert "no supervisor is running for stack 'teststack'" in result.stderr
    down = stack.cli("down")
    assert down.returncode == 0 and "not running" in down.stdout
    history = stack.cli("history", "--json")
    assert history.returncode == 0 and json.loads(history.stdout) == []
    logs = stack.cli("logs", "api")
    assert logs.returncode == 1 and "no log" in logs.stderr


def test_missing_config_and_bad_flags(tmp_path: Path, state_dir: Path) -> None:
    env = python_env(PROCGUARD_STATE_DIR=str(state_dir))
    missing = subprocess.run([*PROCGUARD, "status", "-c", str(tmp_path / "none.toml")], env=env,
                             capture_output=True, text=True, timeout=60, check=False)
    assert missing.returncode == 2 and "none.toml" in missing.stderr
    bad = subprocess.run([*PROCGUARD, "logs", "x", "-n", "many", "-c", str(tmp_path / "none.toml")], env=env,
                         capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 2


def test_status_stop_start_restart_logs_history(stack: Stack, tmp_path: Path) -> None:
    proc = stack.up()
    stack.wait_state("api", "running")
    stack.wait_state("worker", "running")

    status = stack.cli("status", "--json")
    assert status.returncode == 0, status.stderr
    workers = json.loads(status.stdout)
    assert [w["name"] for w in workers] == ["api", "worker"]
    for worker in workers:
        assert set(worker) >= STATUS_KEYS
        assert worker["state"] == "running" and isinstance(worker["pid"], int)
        assert worker["restarts"] == 0 and worker["last_exit"] is None
        assert worker["uptime_seconds"] >= 0
    wait_for(lambda: (stack.worker("api") or {}).get("memory_mb"), message="a memory sample")

    table = stack.cli("status")
    assert table.returncode == 0
    assert table.stdout.splitlines()[1].split()[:4] == ["NAME", "STATE", "PID", "UPTIME"]
    assert "api" in table.stdout and "running" in table.stdout

    old_pid = workers[0]["pid"]
    stop = stack.cli("stop", "api")
    assert stop.returncode == 0 and "api is stopped" in stop.stdout
    assert stack.worker("api")["state"] == "stopped"  # type: ignore[index]
    assert stack.cli("stop", "api").stdout.strip() == "api is already stopped"
    start = stack.cli("start", "api")
    assert start.returncode == 0 and "api is starting" in start.stdout
    restart = stack.cli("restart", "api")
    assert restart.returncode == 0, restart.stderr
    api = stack.wait_state("api", "running")
    assert api["pid"] != old_pid and api["restarts"] == 1
    assert api["last_exit"]["reason"] == "stopped" and api["last_exit"]["by"] == "operator"
    assert api["last_exit"]["detail"] == "procguard restart"

    wait_for(lambda: stack.cli("logs", "worker", "-n", "3").stdout.count("tick from") == 3,
             message="three lines of the ticker's log")
    logs = stack.cli("logs", "worker", "-n", "3").stdout.splitlines()
    assert all(line.split(" ", 1)[1].startswith("tick from") for line in logs)
    log_files = sorted(p.name for p in (stack.state_dir / "logs" / "teststack").iterdir())
    wait_for((stack.state_dir / "logs" / "teststack" / "worker.log.1").exists,
             message=f"rotation of worker.log (files: {log_files})")

    follower = stack.spawn([*PROCGUARD, "logs", "worker", "-f", "-n", "0", "-c", str(stack.config)],
                           env=stack.env)
    assert follower.stdout is not None
    line = follower.stdout.readline().decode()
    assert "tick from" in line

    history = json.loads(stack.cli("history", "--json", "-n", "0").stdout)
    api_events = [(e["event"], e["reason"]) for e in history if e["worker"] == "api"]
    assert api_events[:2] == [("start", None), ("stop", "stopped")]
    assert api_events[-1] == ("start", None)
    newest_first = [e["time"] for e in history]
    assert newest_first == sorted(newest_first, reverse=True)
    assert len(json.loads(stack.cli("history", "--json", "-n", "2").stdout)) == 2
    only = json.loads(stack.cli("history", "--json", "--worker", "worker").stdout)
    assert {e["worker"] for e in only} == {"worker"}
    text = stack.cli("history").stdout.splitlines()
    assert text[0].split()[:3] == ["TIME", "WORKER", "EVENT"]

    assert stack.cli("down").returncode == 0
    assert proc.wait(timeout=20) == 0
    wait_for_file(stack.out_path)
    assert "api       |" in stack.output() or "api    |" in stack.output()


def test_up_status_port_flag_is_validated(stack: Stack) -> None:
    result = stack.cli("up", "--status-port", "99999")
    assert result.returncode == 2 and "--status-port" in result.stderr


# -- finding the stack from any shell (no -c, no ./procguard.toml) ----------------------


def _elsewhere(tmp_path: Path) -> Path:
    """A working directory with no procguard.toml in it."""
    path = tmp_path / "elsewhere"
    path.mkdir(exist_ok=True)
    return path


def _cli_from(cwd: Path, state_dir: Path, *args: str, via_flag: bool = False) -> subprocess.CompletedProcess[str]:
    """``procguard ARGS`` run in ``cwd`` without -c; the state dir by env, or by --state-dir only."""
    env = python_env(PROCGUARD_LOG_LEVEL="WARNING", PROCGUARD_STATE_DIR=str(state_dir))
    argv = [*PROCGUARD, *args]
    if via_flag:
        del env["PROCGUARD_STATE_DIR"]
        argv += ["--state-dir", str(state_dir)]
    return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr


def test_control_commands_find_the_only_running_stack_from_any_shell(stack: Stack, tmp_path: Path) -> None:
    cwd = _elsewhere(tmp_path)
    proc = stack.up()
    stack.wait_state("worker", "running")
    stack.wait_state("api", "running")

    for via_flag in (False, True):
        status = _cli_from(cwd, stack.state_dir, "status", "--json", via_flag=via_flag)
        assert status.returncode == 0, status.stderr
        assert [w["name"] for w in json.loads(status.stdout)] == ["api", "worker"]
    table = _cli_from(cwd, stack.state_dir, "status")
    assert table.stdout.splitlines()[0].startswith("stack teststack (supervisor PID")

    stop = _cli_from(cwd, stack.state_dir, "stop", "worker")
    assert stop.returncode == 0 and "worker is stopped" in stop.stdout, stop.stderr
    unknown = _cli_from(cwd, stack.state_dir, "start", "nope")
    assert unknown.returncode == 2 and "use one of: api, worker" in _one_line_error(unknown)
    start = _cli_from(cwd, stack.state_dir, "start", "worker")
    assert start.returncode == 0, start.stderr
    stack.wait_state("worker", "running")
    wait_for(lambda: "tick from" in _cli_from(cwd, stack.state_dir, "logs", "worker", "-n", "1").stdout,
             message="a line of the ticker's log through 'procguard logs' without -c")

    # The config file goes away while the stack runs: the commands still reach the
    # supervisor by its project name, and the supervisor checks worker names itself.
    stack.config.rename(stack.config.with_name("moved.toml"))
    assert _cli_from(cwd, stack.state_dir, "status", "--json").returncode == 0
    unknown = _cli_from(cwd, stack.state_dir, "stop", "nope")
    assert unknown.returncode == 2, unknown.stderr
    warning, error = unknown.stderr.strip().splitlines()
    assert "cannot use its config" in warning and "procguard.toml: no such file" in warning
    assert error == "procguard stop: unknown worker 'nope' (use one of: api, worker)"
    restart = _cli_from(cwd, stack.state_dir, "restart", "api")
    assert restart.returncode == 0, restart.stderr

    down = _cli_from(cwd, stack.state_dir, "down")
    assert down.returncode == 0 and "stack 'teststack' stopped" in down.stdout, down.stderr
    assert proc.wait(timeout=30) == 0

    # Not running any more: status says so (3), down has nothing to do (0) ...
    status = _cli_from(cwd, stack.state_dir, "status")
    assert status.returncode == 3
    assert "no supervisor is running in state directory" in _one_line_error(status)
    again = _cli_from(cwd, stack.state_dir, "down")
    assert again.returncode == 0 and "no stack is running" in again.stdout
    # ... and history and logs still read the stopped stack, the only one with history here.
    history = _cli_from(cwd, stack.state_dir, "history", "--json", "-n", "0")
    assert history.returncode == 0, history.stderr
    events = json.loads(history.stdout)
    assert {e["project"] for e in events} == {"teststack"}
    assert ("api", "stop", "stopped") in {(e["worker"], e["event"], e["reason"]) for e in events}
    only = _cli_from(cwd, stack.state_dir, "history", "--json", "--worker", "worker")
    assert {e["worker"] for e in json.loads(only.stdout)} == {"worker"}
    bad = _cli_from(cwd, stack.state_dir, "history", "--worker", "nope")
    assert bad.returncode == 2 and "use one of: api, worker" in _one_line_error(bad)
    logs = _cli_from(cwd, stack.state_dir, "logs", "worker", "-n", "2")
    assert logs.returncode == 0, logs.stderr
    log_file = stack.state_dir / "logs" / "teststack" / "worker.log"
    assert logs.stdout.splitlines() == log_file.read_text().splitlines()[-2:]
    missing = _cli_from(cwd, stack.state_dir, "logs", "nope")
    assert missing.returncode == 1 and "logs of stack 'teststack': api, worker" in _one_line_error(missing)


@pytest.mark.slow
def test_several_running_stacks_are_told_apart_by_project(tmp_path: Path, state_dir: Path, spawn: Any) -> None:
    stacks = {}
    for project in ("beta", "alpha"):
        directory = tmp_path / project
        directory.mkdir()
        config = write_config(directory, {"ticker": {"command": worker_cmd("ticker.py", directory / "ticks")}},
                              project=project, defaults={"grace": "5s"})
        stacks[project] = Stack(config, state_dir, spawn, project=project, tuning=FAST)
    cwd = _elsewhere(tmp_path)
    procs = {project: s.up() for project, s in stacks.items()}
    for s in stacks.values():
        s.wait_state("ticker", "running")

    for command in (["status"], ["stop", "ticker"], ["down"], ["logs", "ticker"], ["history"]):
        result = _cli_from(cwd, state_dir, *command)
        assert result.returncode == 2, (command, result.stderr)
        line = _one_line_error(result)
        assert "2 stacks are running" in line and "alpha, beta" in line
        assert "-c FILE" in line and "--project NAME" in line

    beta = _cli_from(cwd, state_dir, "status", "--json", "--project", "beta")
    assert beta.returncode == 0 and [w["name"] for w in json.loads(beta.stdout)] == ["ticker"]
    stop = _cli_from(cwd, state_dir, "stop", "ticker", "--project", "alpha")
    assert stop.returncode == 0, stop.stderr
    stacks["alpha"].wait_state("ticker", "stopped")
    assert stacks["beta"].worker("ticker")["state"] == "running"  # type: ignore[index]

    # -c and --project must agree; a bad project name is a usage error, not a path.
    mismatch = _cli_from(cwd, state_dir, "status", "-c", str(stacks["alpha"].config), "--project", "beta")
    assert mismatch.returncode == 2 and "does not match" in _one_line_error(mismatch)
    bad = _cli_from(cwd, state_dir, "logs", "ticker", "--project", "../alpha")
    assert bad.returncode == 2 and "--project" in _one_line_error(bad)
    nobody = _cli_from(cwd, state_dir, "status", "--project", "gamma")
    assert nobody.returncode == 3 and "stack 'gamma'" in _one_line_error(nobody)

    assert _cli_from(cwd, state_dir, "down", "--project", "alpha").returncode == 0
    assert procs["alpha"].wait(timeout=30) == 0
    # One left running: it is found alone again.
    assert json.loads(_cli_from(cwd, state_dir, "status", "--json").stdout)[0]["state"] == "running"
    assert _cli_from(cwd, state_dir, "down").returncode == 0
    assert procs["beta"].wait(timeout=30) == 0

    # None running, two with history: history and logs want --project.
    history = _cli_from(cwd, state_dir, "history")
    assert history.returncode == 2
    assert "no stack is running" in _one_line_error(history) and "alpha, beta" in history.stderr
    alpha = json.loads(_cli_from(cwd, state_dir, "history", "--json", "--project", "alpha").stdout)
    assert alpha and {e["project"] for e in alpha} == {"alpha"}
    logs = _cli_from(cwd, state_dir, "logs", "ticker", "-n", "5", "--project", "beta")
    assert logs.returncode == 0 and "tick from" in logs.stdout


def test_commands_in_a_state_dir_where_nothing_ever_ran(tmp_path: Path, state_dir: Path) -> None:
    cwd = _elsewhere(tmp_path)
    for command in (["status"], ["stop", "api"], ["start", "api"], ["restart", "api"]):
        result = _cli_from(cwd, state_dir, *command)
        assert result.returncode == 3, (command, result.stderr)
        assert "no supervisor is running in state directory" in _one_line_error(result)
    down = _cli_from(cwd, state_dir, "down")
    assert down.returncode == 0 and "no stack is running" in down.stdout
    history = _cli_from(cwd, state_dir, "history", "--json")
    assert history.returncode == 0 and json.loads(history.stdout) == []
    logs = _cli_from(cwd, state_dir, "logs", "api")
    assert logs.returncode == 1 and "no stack has run" in _one_line_error(logs)
    # ./procguard.toml still wins when it is there (and its errors are reported).
    (cwd / "procguard.toml").write_text("[workers.api]\nbogus = 1\n")
    broken = _cli_from(cwd, state_dir, "status")
    assert broken.returncode == 2 and "bogus" in _one_line_error(broken)


#: Each command's required positionals, so that only --state-dir is under test.
_POSITIONALS = {"run": ["pkg.mod:fn"], "cleanup": ["all"], "start": ["api"], "stop": ["api"],
                "restart": ["api"], "logs": ["api"], "signal": ["api", "HUP"], "scale": ["api", "2"]}


@pytest.mark.parametrize("command", ["run", "ps", "cleanup", "up", "down", "status", "start", "stop",
                                     "restart", "signal", "scale", "reload", "logs", "history", "completion"])
def test_every_command_that_touches_state_takes_state_dir(command: str) -> None:
    from procguard.cli.main import COMMANDS, build_parser

    assert command in COMMANDS
    parser, _module = build_parser(command)
    namespace = parser.parse_args([*_POSITIONALS.get(command, []), "--state-dir", "somewhere"])
    assert namespace.state_dir == "somewhere"


def test_the_state_dir_check_covers_every_command_but_check_and_deploy() -> None:
    from procguard.cli.main import COMMANDS

    covered = {"run", "ps", "cleanup", "up", "down", "status", "start", "stop", "restart", "signal", "scale", "reload",
               "logs", "history", "completion"}  # completion: the worker names of a running stack
    assert set(COMMANDS) - {"check", "deploy"} == covered


def test_parsing_any_command_line_loads_no_shutil() -> None:
    """argparse's default help width imports shutil, and with it bz2 and lzma: 0.7 MB in every
    process that parses a command line, the long-lived supervisor included."""
    code = (
        "import sys\n"
        "from procguard.cli.main import COMMANDS, build_parser\n"
        "for name in COMMANDS:\n"
        "    build_parser(name)[0].format_help()\n"
        "print(sorted(m for m in ('shutil', 'bz2', 'lzma') if m in sys.modules))\n"
    )
    result = subprocess.run([PYTHON, "-c", code], env=python_env(), capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_help_still_fits_the_terminal_width() -> None:
    result = subprocess.run([*PROCGUARD, "up", "--help"], env=python_env(COLUMNS="50"), capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) > 10 and max(len(line) for line in lines) <= 50
