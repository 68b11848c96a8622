"""The habits of supervisord, PM2, circus and honcho users, each proved on a real stack.

docs/coming-from.md has a table of the settings and commands those users
look for, with procguard's equivalent. Every row procguard claims names its
proof in :data:`ROWS` (a test here, or the test elsewhere that already
proves the behaviour); :func:`test_every_claimed_row_has_a_test` fails when
a row of the table has none, or names a test that does not exist. The
tests here cover the keys added for these habits: ``env_file``,
``stop_signal``, ``user``/``group``/``umask``, ``runtime_jitter`` /
``iterations_jitter``, ``depends_on = { X = "ready" }`` and
``start_limit = 0``.
"""

from __future__ import annotations

import importlib
import os
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from procguard.manager import ProcessManager
from procguard.supervisor.history import db_path, read_events

from .helpers import PROCGUARD, REPO_ROOT, free_port, python_env, wait_for
from .supervisor_workers.stackkit import Stack, alive, lines, worker_cmd, write_config

#: Each row of docs/coming-from.md that procguard claims ("tool: their setting" as the table writes
#: it, without backquotes) and the tests that prove it ("module::test"; a bare name is in this module).
ROWS: dict[str, tuple[str, ...]] = {
    "supervisord: command": ("test_supervisor::test_crash_restarts_at_once_then_waits_its_backoff",),
    "supervisord: numprocs": ("test_supervisor_copies::test_three_copies_run_are_shown_stopped_and_scaled",),
    "supervisord: directory": ("test_env_file_is_read_under_env_relative_to_the_config",),
    "supervisord: environment": ("test_env_file_is_read_under_env_relative_to_the_config",),
    "supervisord: user": ("test_user_group_and_umask_apply_to_the_worker",
                          "test_a_program_the_user_cannot_run_names_the_user",
                          "test_a_user_that_cannot_be_had_fails_up_in_one_line"),
    "supervisord: umask": ("test_user_group_and_umask_apply_to_the_worker",),
    "supervisord: autorestart": ("test_supervisor_states::test_policies_on_failure_and_never",
                                 "test_supervisor::test_crash_restarts_at_once_then_waits_its_backoff"),
    "supervisord: startretries": ("test_supervisor::test_crash_loop_goes_fatal_with_bounded_restarts_and_idle_supervisor",
                                  "test_start_limit_zero_retries_forever_with_backoff"),
    "supervisord: stopsignal": ("test_stop_signal_is_what_a_graceful_stop_sends",
                                "test_stop_signal_reaches_a_command_under_procguard_run",
                                "test_a_stop_signal_that_cannot_stop_gracefully_is_refused"),
    "supervisord: stopwaitsecs": ("test_supervisor::test_down_stops_all_workers_in_parallel_within_grace",),
    "supervisord: stopasgroup, killasgroup": ("test_a_stop_reaches_the_whole_process_group",),
    "supervisord: priority": ("test_supervisor::test_dependencies_start_after_and_stop_before",),
    "supervisord: stdout_logfile_maxbytes, stdout_logfile_backups": (
        "test_supervisor_parts::test_rotating_file_keeps_the_configured_backups",),
    "supervisord: [inet_http_server]": ("test_status_page::test_api_workers_and_metrics",),
    "supervisord: supervisorctl status": ("test_stack_cli::test_status_stop_start_restart_logs_history",),
    "supervisord: supervisorctl start, stop, restart": (
        "test_stack_cli::test_status_stop_start_restart_logs_history",
        "test_bulk_commands::test_stop_start_restart_by_glob_and_all_in_dependency_order"),
    "supervisord: supervisorctl tail -f": ("test_logs_interleaved::test_logs_of_several_workers_interleave_in_time_order",),
    "supervisord: supervisorctl signal": ("test_bulk_commands::test_signal_reaches_the_workers_main_process",),
    "supervisord: supervisorctl reread, update": (
        "test_config_reload::test_reload_adds_removes_changes_and_leaves_the_rest_alone",
        "test_config_reload::test_sighup_to_the_supervisor_reloads_like_the_command"),
    "supervisord: supervisorctl shutdown": ("test_supervisor::test_down_stops_all_workers_in_parallel_within_grace",),
    "PM2: pm2 start ecosystem.config.js": (
        "test_supervisor::test_up_detach_five_times_gives_one_supervisor_and_no_duplicates",),
    "PM2: instances": ("test_supervisor_copies::test_three_copies_run_are_shown_stopped_and_scaled",),
    "PM2: max_memory_restart": ("test_supervisor::test_memory_limit_of_a_command_is_enforced_from_outside",),
    "PM2: max_restarts": ("test_start_limit_zero_retries_forever_with_backoff",
                          "test_supervisor::test_crash_loop_goes_fatal_with_bounded_restarts_and_idle_supervisor"),
    "PM2: min_uptime": ("test_supervisor_states::test_a_stable_run_resets_the_backoff",),
    "PM2: restart_delay, exp_backoff_restart_delay": (
        "test_supervisor_states::test_first_crash_restarts_at_once_then_backoff_doubles_up_to_the_cap",
        "test_supervisor::test_crash_restarts_at_once_then_waits_its_backoff"),
    "PM2: kill_timeout": ("test_supervisor::test_down_stops_all_workers_in_parallel_within_grace",),
    "PM2: wait_ready, listen_timeout": ("test_depends_on_ready_waits_for_the_dependency_to_answer_ready",),
    "PM2: env": ("test_env_file_is_read_under_env_relative_to_the_config",),
    "PM2: pm2 list, pm2 monit": ("test_stack_cli::test_status_stop_start_restart_logs_history",
                                 "test_status_page::test_api_workers_and_metrics"),
    "PM2: pm2 logs": ("test_logs_interleaved::test_logs_of_several_workers_interleave_in_time_order",),
    "PM2: pm2 scale": ("test_supervisor_copies::test_three_copies_run_are_shown_stopped_and_scaled",),
    "PM2: pm2 sendSignal": ("test_bulk_commands::test_signal_reaches_the_workers_main_process",),
    "PM2: pm2 reload": ("test_reload_bluegreen::test_reloads_of_the_api_under_load_fail_no_request",),
    "PM2: pm2 startup, pm2 save": ("test_deploy_engines::test_units_pass_systemd_analyze_verify_and_score_low",),
    "circus: numprocesses": ("test_supervisor_copies::test_three_copies_run_are_shown_stopped_and_scaled",),
    "circus: circusctl incr, decr": ("test_supervisor_copies::test_three_copies_run_are_shown_stopped_and_scaled",),
    "circus: graceful_timeout": ("test_supervisor::test_down_stops_all_workers_in_parallel_within_grace",),
    "circus: stop_signal": ("test_stop_signal_is_what_a_graceful_stop_sends",),
    "circus: max_age, max_age_variance": ("test_runtime_jitter_spreads_the_recycles_of_a_command",
                                          "test_runtime_jitter_under_procguard_run"),
    "circus: respawn": ("test_supervisor_states::test_policies_on_failure_and_never",),
    "circus: max_retry": ("test_start_limit_zero_retries_forever_with_backoff",),
    "circus: uid, gid": ("test_user_group_and_umask_apply_to_the_worker",),
    "circus: copy_env, env": ("test_env_file_is_read_under_env_relative_to_the_config",),
    "circus: circusctl stats": ("test_stack_cli::test_status_stop_start_restart_logs_history",),
    "honcho: Procfile web: CMD": ("test_supervisor::test_crash_restarts_at_once_then_waits_its_backoff",),
    "honcho: .env": ("test_env_file_is_read_under_env_relative_to_the_config", "test_reload_reads_the_env_file_again",
                     "test_a_bad_env_file_is_one_line_exit_2"),
    "honcho: honcho start": ("test_supervisor::test_dependencies_start_after_and_stop_before",),
    "honcho: honcho start web": ("test_supervisor::test_dependencies_start_after_and_stop_before",),
    "honcho: -c web=2": ("test_supervisor_copies::test_three_copies_run_are_shown_stopped_and_scaled",),
    "honcho: honcho export systemd, supervisord": (
        "test_deploy_engines::test_units_pass_systemd_analyze_verify_and_score_low",
        "test_deploy_supervisord::test_programs_run_and_stop_all_leaves_no_process",
        "test_generated_files_carry_the_new_keys"),
    "gunicorn: max_requests, max_requests_jitter": ("test_iterations_jitter_spreads_the_recycles_of_a_function",
                                                    "test_iterations_jitter_in_process_manager"),
    "docker compose: depends_on: condition: service_healthy": (
        "test_depends_on_ready_waits_for_the_dependency_to_answer_ready", "test_depends_on_ready_needs_a_health_port"),
    "Kubernetes: CrashLoopBackOff": ("test_start_limit_zero_retries_forever_with_backoff",),
}

FAST = "start_period_s=0.3,sample_interval_s=0.2,probe_delay_s=0.2,probe_period_s=0.2,probe_timeout_s=1"


def make_stack(tmp_path: Path, state_dir: Path, spawn: Any, workers: dict[str, dict[str, Any]]) -> Stack:
    config = write_config(tmp_path, workers, defaults={"grace": "5s"})
    return Stack(config, state_dir, spawn, tuning=FAST)


def stops(stack: Stack, worker: str) -> list[Any]:
    events = read_events(db_path(stack.state_dir), project=stack.project, limit=0)
    return [e for e in events if e.worker == worker and e.event == "stop"]


def check(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PROCGUARD, "check", "-c", str(config)], capture_output=True, text=True,
                          env=python_env(), timeout=60, check=False)


# -- env_file (honcho's .env, PM2's env_file, supervisord's environment=) ----------------------------


def test_env_file_is_read_under_env_relative_to_the_config(tmp_path: Path, state_dir: Path, spawn: Any) -> None:
    """Rows: honcho `.env` -> `env_file`; supervisord `environment` -> `env`; `directory` -> `cwd`."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "app.env").write_text(
        "# the app's settings\n"
        "export PLAIN=plain value  # a comment\n"
        "QUOTED=\"two\\tparts\"\n"
        "LITERAL='$HOME stays'\n"
        "OVERRIDDEN=from the file\n"
    )
    (tmp_path / "work").mkdir()
    out = tmp_path / "env.out"
    script = ('import os, sys, time; open(sys.argv[1], "w").write(repr([os.getcwd()] + [os.environ.get(k) for k in '
              '("PLAIN", "QUOTED", "LITERAL", "OVERRIDDEN")])); time.sleep(600)')
    stack = make_stack(tmp_path, state_dir, spawn, {
        "app": {"command": ["python3", "-c", script, str(out)], "env_file": "conf/app.env",
                "env": {"OVERRIDDEN": "from env"}, "cwd": "work"},
    })
    stack.up()
    text = wait_for(lambda: out.exists() and out.read_text(), message=lambda: f"env written; {stack.output()[-2000:]}")
    # env_file is relative to the config file, not to cwd; env wins over the file
    assert text == repr([str(tmp_path / "work"), "plain value", "two\tparts", "$HOME stays", "from env"])


def test_reload_reads_the_env_file_again(tmp_path: Path, state_dir: Path, spawn: Any) -> None:
    """Row: honcho `.env` -> `env_file` (an edited file reaches the worker through `procguard reload`)."""
    (tmp_path / ".env").write_text("GREETING=hello\n")
    out = tmp_path / "greeting"
    script = 'import os, sys, time; open(sys.argv[1], "a").write(os.environ["GREETING"] + "\\n"); time.sleep(600)'
    stack = make_stack(tmp_path, state_dir, spawn, {
        "app": {"command": ["python3", "-c", script, str(out)], "env_file": ".env"},
        "other": {"command": "sleep 600"},
    })
    stack.up()
    wait_for(lambda: lines(out) == ["hello"], message=lambda: stack.output()[-2000:])
    other = stack.wait_state("other", "running")["pid"]
    (tmp_path / ".env").write_text("GREETING=bonjour\n")
    result = stack.cli("reload")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith("app: changed: env changed GREETING (reloaded (pid ")
    wait_for(lambda: lines(out) == ["hello", "bonjour"], message=lambda: stack.output()[-2000:])
    assert stack.worker("other")["pid"] == other  # type: ignore[index]


def test_a_bad_env_file_is_one_line_exit_2(tmp_path: Path) -> None:
    """Row: honcho `.env` -> `env_file` (a mistake is refused before anything starts)."""
    (tmp_path / "bad.env").write_text("GOOD=1\nthis is not a variable\n")
    config = write_config(tmp_path, {"app": {"command": "sleep 1", "env_file": "bad.env"}})
    result = check(config)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "workers.app.env_file" in result.stderr and "bad.env line 2" in result.stderr
    assert "NAME=value" in result.stderr
    config = write_config(tmp_path, {"app": {"command": "sleep 1", "env_file": "missing.env"}})
    result = check(config)
    assert result.returncode == 2 and "missing.env: no such file" in result.stderr


# -- stop_signal (supervisord's stopsignal=, circus's stop_signal) ------------------------------------


def test_stop_signal_is_what_a_graceful_stop_sends(tmp_path: Path, state_dir: Path, spawn: Any) -> None:
    """Row: supervisord `stopsignal` / circus `stop_signal` -> `stop_signal`."""
    quit_file, default_file = tmp_path / "quit", tmp_path / "default"
    stack = make_stack(tmp_path, state_dir, spawn, {
        "quitter": {"command": worker_cmd("stopsig.py", quit_file), "stop_signal": "QUIT"},
        "plain": {"command": worker_cmd("stopsig.py", default_file)},
    })
    stack.up()
    wait_for(lambda: lines(quit_file) and lines(default_file), message=lambda: stack.output()[-2000:])
    for name in ("quitter", "plain"):
        result = stack.cli("stop", name)
        assert result.returncode == 0, result.stderr
    assert lines(quit_file)[-1] == "stopped by SIGQUIT"
    assert lines(default_file)[-1] == "stopped by SIGTERM"
    [stop] = stops(stack, "quitter")
    assert (stop.reason, stop.by) == ("stopped", "operator")


def test_stop_signal_reaches_a_command_under_procguard_run(tmp_path: Path, state_dir: Path, spawn: Any) -> None:
    """Row: supervisord `stopsignal` / circus `stop_signal` -> `stop_signal` (the generated files' runner)."""
    record = tmp_path / "sig"
    proc = spawn([*PROCGUARD, "run", "--name", "q", "--health-port", "0", "--stop-signal", "USR2", "--",
                  *worker_cmd("stopsig.py", record)],
                 env=python_env(PROCGUARD_STATE_DIR=str(state_dir)), stdout=subprocess.PIPE,
                 stderr=subprocess.STDOUT)
    wait_for(lambda: lines(record), message="the command's handlers")
    proc.send_signal(signal.SIGTERM)  # what systemd, supervisord or Kubernetes send the runner
    assert proc.wait(timeout=30) == 0
    assert lines(record)[-1] == "stopped by SIGUSR2"


@pytest.mark.parametrize(("value", "accepted"), [
    ("KILL", "cannot be caught"), ("TERMINATE", "is not a stop signal"), (9, "is not a stop signal"),
])
def test_a_stop_signal_that_cannot_stop_gracefully_is_refused(tmp_path: Path, value: object, accepted: str) -> None:
    """Row: supervisord `stopsignal` / circus `stop_signal` -> `stop_signal` (what is refused)."""
    config = write_config(tmp_path, {"app": {"command": "sleep 1", "stop_signal": value}})
    result = check(config)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "workers.app.stop_signal" in result.stderr and accepted in result.stderr
    assert "TERM, INT, QUIT, HUP, USR1, USR2" in result.stderr
    config = write_config(tmp_path, {"fn": {"run": "m:f", "stop_signal": "INT"}})
    result = check(config)
    assert result.returncode == 2 and "applies to command workers only" in result.stderr


# -- user, group, umask (supervisord's user=, systemd's User=/Group=/UMask=) --------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_user_group_and_umask_apply_to_the_worker(tmp_path: Path, state_dir: Path, spawn: Any) -> None:
    """Row: supervisord `user` / `umask` -> `user`, `group`, `umask`."""
    import grp
    import pwd

    nobody = pwd.getpwnam("nobody")
    group = grp.getgrgid(nobody.pw_gid).gr_name
    script = 'echo "who uid=$(id -u) gid=$(id -g) groups=$(id -G) umask=$(umask) home=$HOME user=$USER"; exec sleep 600'
    stack = make_stack(tmp_path, state_dir, spawn, {
        "dropped": {"command": ["sh", "-c", script], "user": "nobody", "umask": "027"},
        "grouped": {"command": ["sh", "-c", script], "group": group},
    })
    stack.up()

    def said(name: str) -> str:
        result = stack.cli("logs", name, "-n", "20")
        # the worker's own line, not procguard's note of its command line
        found = [line for line in result.stdout.splitlines() if "who uid=" in line and "[procguard]" not in line]
        return found[-1] if found else ""

    dropped = wait_for(lambda: said("dropped"), message=lambda: stack.output()[-2000:])
    assert f"uid={nobody.pw_uid} gid={nobody.pw_gid} " in dropped
    assert f"groups={' '.join(str(g) for g in os.getgrouplist('nobody', nobody.pw_gid))} " in dropped
    assert f"umask=0027 home={nobody.pw_dir} user=nobody" in dropped
    grouped = wait_for(lambda: said("grouped"), message=lambda: stack.output()[-2000:])
    assert f"uid=0 gid={nobody.pw_gid} groups={nobody.pw_gid} " in grouped
    worker = stack.worker("dropped")
    assert worker is not None and worker["state"] in ("starting", "running")


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_a_program_the_user_cannot_run_names_the_user(tmp_path: Path, state_dir: Path, spawn: Any) -> None:
    """Row: supervisord `user` / `umask` -> `user`, `group`, `umask` (a start the account cannot make)."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    program = private / "prog.sh"
    program.write_text("#!/bin/sh\nexec sleep 600\n")
    program.chmod(0o755)
    stack = make_stack(tmp_path, state_dir, spawn, {
        "locked": {"command": [str(program)], "user": "nobody", "start_limit": 1},
    })
    stack.up()
    worker = stack.wait_state("locked", "fatal")
    assert worker["last_exit"]["detail"].startswith(
        "cannot start: Permission denied as user nobody (that account must be able to enter cwd")


def test_a_user_that_cannot_be_had_fails_up_in_one_line(tmp_path: Path, state_dir: Path) -> None:
    """Row: supervisord `user` / `umask` -> `user`, `group`, `umask` (refusals)."""
    from procguard.config import parse_config
    from procguard.errors import UsageError
    from procguard.supervisor.accounts import resolve_account

    config = write_config(tmp_path, {"app": {"command": "sleep 600", "user": "no-such-user-here"}})
    result = subprocess.run([*PROCGUARD, "up", "-c", str(config)], capture_output=True, text=True,
                            env=python_env(PROCGUARD_STATE_DIR=str(state_dir)), timeout=60, check=False)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1].endswith(
        "workers.app.user: no user 'no-such-user-here' on this machine (use an existing user)")
    assert "Traceback" not in result.stderr
    worker = parse_config('[workers.app]\ncommand = "x"\nuser = "nobody"\n').workers["app"]
    with pytest.raises(UsageError, match=r"workers\.app\.user: procguard up runs as uid 1000, not root"):
        resolve_account(worker, euid=1000)
    result = check(write_config(tmp_path, {"app": {"command": "x", "umask": "999"}}))
    assert result.returncode == 2 and "is not a umask" in result.stderr


# -- jitter (gunicorn's max_requests_jitter, circus's max_age_variance) -----------------------------


def test_runtime_jitter_spreads_the_recycles_of_a_command(tmp_path: Path, state_dir: Path, spawn: Any) -> None:
    """Row: circus `max_age` + `max_age_variance` -> `max_runtime` + `runtime_jitter`."""
    record = tmp_path / "starts"
    stack = make_stack(tmp_path, state_dir, spawn, {
        "aging": {"command": worker_cmd("stopsig.py", record), "max_runtime": "1.5s", "runtime_jitter": "1.2s"},
    })
    stack.up()
    wait_for(lambda: len(stops(stack, "aging")) >= 5, timeout=40, message=lambda: stack.output()[-2000:])
    ended = stops(stack, "aging")[:5]
    assert {e.reason for e in ended} == {"max_runtime"}
    runtimes = [e.runtime_seconds for e in ended]
    assert all(r <= 1.5 + 1.0 for r in runtimes), runtimes  # never past max_runtime (+ the stop)
    # How early each recycle came is the draw itself, whatever the load: five uniform draws in
    # [0, 1.2] s all below 0.2 s have a chance of 1 in 7776.
    drawn = [(e.runtime_seconds, float(m.group(1)) if (m := re.search(r"([0-9.]+)s early", e.detail or "")) else 0.0)
             for e in ended]
    assert all(0 <= d <= 1.2 for _, d in drawn) and any(d >= 0.2 for _, d in drawn), drawn
    assert all(r >= 1.5 - d - 0.1 for r, d in drawn), drawn  # recycled at its own draw, not sooner


def test_runtime_jitter_under_procguard_run(tmp_path: Path, state_dir: Path, spawn: Any) -> None:
    """Row: circus `max_age` + `max_age_variance` -> `max_runtime` + `runtime_jitter` (the runner of
    the generated files)."""
    drawn = []
    for _ in range(5):
        proc = spawn([*PROCGUARD, "run", "--name", "aging", "--health-port", "0", "--max-runtime", "1.5s",
                      "--runtime-jitter", "1.2s", "--", "sleep", "600"],
                     env=python_env(PROCGUARD_STATE_DIR=str(state_dir)), stdout=subprocess.PIPE,
                     stderr=subprocess.STDOUT)
        out = proc.communicate(timeout=60)[0].decode()
        assert proc.returncode == 80, out  # max_runtime
        match = re.search(r"stopped: max_runtime \(ran ([0-9.]+)s, max runtime 1.5s(?:, ([0-9.]+)s early)?", out)
        assert match, out
        drawn.append((float(match.group(1)), float(match.group(2) or 0)))
    assert all(r <= 1.5 + 0.5 and d <= 1.2 for r, d in drawn), drawn  # never later than the limit (+ a wake-up)
    assert any(d >= 0.2 for _, d in drawn), drawn  # five draws all below 0.2 s: 1 in 7776


def test_iterations_jitter_spreads_the_recycles_of_a_function(tmp_path: Path, state_dir: Path, spawn: Any) -> None:
    """Row: gunicorn `max_requests` + `max_requests_jitter` -> `max_iterations` + `iterations_jitter`."""
    stack = make_stack(tmp_path, state_dir, spawn, {
        "loop": {"run": "tests.supervisor_workers.targets:idle", "interval": 0, "max_iterations": 40,
                 "iterations_jitter": 30},
    })
    stack.up()
    wait_for(lambda: len(stops(stack, "loop")) >= 4, timeout=60, message=lambda: stack.output()[-2000:])
    ended = stops(stack, "loop")[:4]
    assert {e.reason for e in ended} == {"max_iterations"}
    done = [int(re.match(r"(\d+) iterations done", e.detail or "").group(1)) for e in ended]  # type: ignore[union-attr]
    assert all(10 <= n <= 40 for n in done), done
    assert any(n < 40 for n in done), done  # four draws of 40 out of 31 values: 1 in 923521


def test_iterations_jitter_in_process_manager() -> None:
    """Row: gunicorn `max_requests` + `max_requests_jitter` -> `max_iterations` + `iterations_jitter`
    (a ProcessManager program)."""
    counts = set()
    for _ in range(20):
        # terminate_children=False: the test process's children are the suite's, not this worker's
        with ProcessManager(max_iterations=50, iterations_jitter=20, handle_signals=False, health_port=None,
                            max_runtime_hours=0, memory_limit_mb=0, cpu_limit_percent=0,
                            terminate_children=False, include_children=False) as manager:
            n = 0
            while manager.should_continue():
                n += 1
        counts.add(n)
    assert all(30 <= n <= 50 for n in counts), counts
    assert len(counts) > 1, counts


# -- depends_on readiness (docker compose's condition: service_healthy) ------------------------------


def test_depends_on_ready_waits_for_the_dependency_to_answer_ready(
    tmp_path: Path, state_dir: Path, spawn: Any
) -> None:
    """Row: compose `depends_on: condition: service_healthy` -> `depends_on = { api = "ready" }`."""
    gate, order = tmp_path / "gate", tmp_path / "order"
    port = free_port()
    stack = make_stack(tmp_path, state_dir, spawn, {
        "api": {"run": "tests.supervisor_workers.slow_start:work", "interval": "0.05s",
                "health_port": port, "env": {"READY_FILE": str(gate), "ORDER_FILE": str(order)}},
        "web": {"command": ["sh", "-c", f'echo web >> "{order}"; exec sleep 600'], "depends_on": {"api": "ready"}},
        "early": {"command": ["sh", "-c", f'echo early >> "{order}"; exec sleep 600'], "depends_on": ["api"]},
    })
    stack.up()
    stack.wait_state("api", "running")
    wait_for(lambda: "early" in lines(order), message=lambda: stack.output()[-2000:])
    # api runs but its /ready answers 503: web waits (early only waited for it to run)
    stack.wait_state("early", "running")
    assert "web" not in lines(order)
    assert stack.worker("web")["state"] == "stopped"  # type: ignore[index]
    gate.write_text("go")
    wait_for(lambda: "web" in lines(order), message=lambda: stack.output()[-2000:])
    assert lines(order).index("api ready") < lines(order).index("web")


def test_depends_on_ready_needs_a_health_port(tmp_path: Path) -> None:
    """Row: compose `depends_on: condition: service_healthy` -> `depends_on = { api = "ready" }` (refusals)."""
    config = write_config(tmp_path, {"api": {"command": "x"}, "web": {"command": "y", "depends_on": {"api": "ready"}}})
    result = check(config)
    assert result.returncode == 2 and "workers.web.depends_on.api" in result.stderr
    assert "api has no health_port" in result.stderr
    config = write_config(tmp_path, {"api": {"command": "x"}, "web": {"command": "y", "depends_on": {"api": "healthy"}}})
    result = check(config)
    assert result.returncode == 2 and '(use "running" or "ready")' in result.stderr


# -- start_limit = 0 (PM2's unlimited restarts, Kubernetes' CrashLoopBackOff) ---------------------------


def test_start_limit_zero_retries_forever_with_backoff(tmp_path: Path, state_dir: Path, spawn: Any) -> None:
    """Row: PM2 `max_restarts` (unlimited) / supervisord `startretries` -> `start_limit = 0`."""
    record = tmp_path / "crash"
    stack = make_stack(tmp_path, state_dir, spawn, {
        "flaky": {"command": worker_cmd("crash.py", record, 1), "backoff_initial": "0.05s", "backoff_max": "0.1s",
                  "start_limit": 0, "start_limit_interval": "60s"},
    })
    stack.up()
    # the default start limit (5 failures in 60 s) would have made it FATAL long before 12 starts
    wait_for(lambda: len(lines(record)) >= 12, timeout=40, message=lambda: stack.output()[-2000:])
    worker = stack.worker("flaky")
    assert worker is not None and worker["state"] != "fatal"
    assert "FATAL" not in stack.output()


# -- the same keys in the files procguard deploy generates ------------------------------------------------


def test_generated_files_carry_the_new_keys(tmp_path: Path) -> None:
    """Rows: `user`/`umask`, `stop_signal`, `start_limit = 0`, `runtime_jitter` in systemd and supervisord
    files (checked by systemd-analyze where it is installed); Kubernetes refuses a per-worker account."""
    import shutil

    from procguard.config import parse_config
    from procguard.deploy import all_settings, render
    from procguard.errors import UsageError

    text = ('[project]\nname = "shop"\n[workers.api]\ncommand = "python3 -m http.server"\nuser = "nobody"\n'
            'group = "nogroup"\numask = "027"\nstart_limit = 0\nstop_signal = "QUIT"\nruntime_jitter = "5m"\n')
    config = parse_config(text, path="/srv/shop/procguard.toml")
    [unit] = [f.text for f in render("systemd", config, all_settings(config, {}), workdir="/srv/shop")
              if f.filename.endswith(".service")]
    assert "\nUser=nobody\nGroup=nogroup\nUMask=0027\n" in unit
    assert "\nStartLimitIntervalSec=0\n" in unit and "StartLimitBurst" not in unit
    assert " --runtime-jitter 5m " in unit and " --stop-signal QUIT " in unit
    if shutil.which("systemd-analyze") and grp_exists("nogroup"):
        (tmp_path / "shop-api.service").write_text(unit)
        result = subprocess.run(["systemd-analyze", "verify", "./shop-api.service"], cwd=tmp_path,
                                capture_output=True, text=True, timeout=120, check=False)
        assert result.returncode == 0 and "UMask" not in result.stderr, result.stderr
    supervisor_config = parse_config(text.replace('group = "nogroup"\n', ""), path="/srv/shop/procguard.toml")
    [conf] = [f.text for f in render("supervisor", supervisor_config, all_settings(supervisor_config, {}),
                                     workdir="/srv/shop")]
    assert "\nuser=nobody\numask=027\n" in conf and "\nstartretries=1000000\n" in conf
    with pytest.raises(UsageError, match=r"workers\.api\.group: supervisord has no group per program"):
        render("supervisor", config, all_settings(config, {}), workdir="/srv/shop")
    k8s = all_settings(config, {"image": "registry.example.com/shop:1"})
    with pytest.raises(UsageError, match=r"workers\.api\.user: a Kubernetes pod runs as a numeric uid"):
        render("kubernetes", config, k8s)


def grp_exists(name: str) -> bool:
    import grp

    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def test_a_stop_reaches_the_whole_process_group(tmp_path: Path, state_dir: Path, spawn: Any) -> None:
    """Row: supervisord `stopasgroup`, `killasgroup` -> always on."""
    pids = tmp_path / "pids"
    stack = make_stack(tmp_path, state_dir, spawn, {
        "shell": {"command": ["sh", "-c", f'sleep 600 & echo $! >> "{pids}"; echo $$ >> "{pids}"; wait']},
    })
    stack.up()
    child, shell = (int(p) for p in wait_for(lambda: len(lines(pids)) == 2 and lines(pids)))
    assert stack.cli("stop", "shell").returncode == 0
    wait_for(lambda: not alive(child) and not alive(shell), message="the shell and its child gone")


# -- the table itself -------------------------------------------------------------------------------------------

_ROW_RE = re.compile(r"^\| ([^|]+) \| ([^|]+) \| ([^|]+) \|")


def _table_rows() -> dict[str, str]:
    """"tool: their setting" -> procguard's column, for every row of every table of the page."""
    rows = {}
    for line in (REPO_ROOT / "docs" / "coming-from.md").read_text().splitlines():
        match = _ROW_RE.match(line)
        if match and match.group(1).strip() not in ("tool", "---"):
            key = f"{match.group(1).strip()}: {match.group(2).strip().replace('`', '')}"
            assert key not in rows, f"row {key!r} twice"
            rows[key] = match.group(3).strip()
    return rows


def test_every_claimed_row_has_a_test() -> None:
    rows = _table_rows()
    assert len(rows) >= 50
    claimed = {key for key, procguard in rows.items() if not procguard.startswith("not supported")}
    assert sorted(claimed - set(ROWS)) == [], "rows of docs/coming-from.md without a test in ROWS"
    assert sorted(set(ROWS) - claimed) == [], "ROWS names rows the page does not claim"
    for key, tests in ROWS.items():
        assert tests, key
        for test in tests:
            module_name, _, name = test.rpartition("::")
            module = importlib.import_module(f"tests.{module_name}" if module_name else __name__)
            assert callable(getattr(module, name, None)), f"{key}: {test} does not exist"
