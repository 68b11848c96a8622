"""``procguard run -- COMMAND``: a real child held to its limits from outside.

Every test starts a real ``procguard run`` process (through the ``spawn``
fixture, so it is stopped even when the test fails) and checks the exit
status the runner reports, what it printed, and what happened to the
child's process tree.
"""

from __future__ import annotations

import json
import signal
import subprocess
import textwrap
import urllib.request
from pathlib import Path

import psutil
import pytest

from procguard.instances.lock import read_instance
from procguard.reasons import ExitStatus

from .helpers import PROCGUARD, PYTHON, free_port, read_output, wait_for, wait_for_file

RUN = [*PROCGUARD, "run"]


def finish(proc: subprocess.Popen[bytes], timeout: float = 60) -> tuple[int, str, str]:
    """Wait for ``proc`` and return (exit status, stdout, stderr)."""
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def sleep_child(proc: subprocess.Popen[bytes]) -> psutil.Process:
    """The runner's ``sleep`` child, once it runs (fails at once if the runner died)."""

    def find() -> psutil.Process | None:
        if proc.poll() is not None:
            raise AssertionError(f"runner exited ({proc.returncode}):\n{read_output(proc)}")
        for child in psutil.Process(proc.pid).children():
            try:
                if child.name() == "sleep":
                    return child
            except psutil.Error:
                continue
        return None

    return wait_for(find, message="the runner's sleep child")


def child_script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return str(path)


def test_exit_status_of_the_command_is_propagated(spawn, state_dir):
    proc = spawn([*RUN, "--health-port", "0", "--", "sh", "-c", "echo out-line; echo err-line >&2; exit 7"])
    status, out, err = finish(proc)
    assert status == 7, err
    assert "out-line" in out  # the child's output goes straight through
    assert "err-line" in err


def test_a_command_killed_by_a_signal_reports_128_plus_n(spawn, state_dir):
    proc = spawn([*RUN, "--health-port", "0", "--", "sh", "-c", "kill -KILL $$"])
    status, _out, err = finish(proc)
    assert status == 128 + signal.SIGKILL, err
    assert "SIGKILL" in err


def test_sigterm_is_forwarded_and_the_child_finishes_its_work(spawn, state_dir, tmp_path):
    ready = tmp_path / "ready"
    done = tmp_path / "done"
    script = child_script(tmp_path, "graceful.py", f"""
        import signal, sys, time
        stop = []
        signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
        open({str(ready)!r}, "w").write("ready")
        while not stop:
            time.sleep(0.01)
        time.sleep(0.3)  # the in-flight work
        open({str(done)!r}, "w").write("done")
        sys.exit(0)
    """)
    proc = spawn([*RUN, "--health-port", "0", "--", PYTHON, script])
    wait_for_file(ready, proc=proc)
    proc.send_signal(signal.SIGTERM)
    status, _out, err = finish(proc)
    assert status == 0, err  # the command's own status after a forwarded signal
    assert done.read_text() == "done"
    assert "forwarding SIGTERM to pid" in err


def test_sigterm_to_a_command_that_dies_of_it_gives_143(spawn, state_dir):
    proc = spawn([*RUN, "--health-port", "0", "--", "sleep", "60"])
    sleep_child(proc)
    proc.send_signal(signal.SIGTERM)
    status, _out, err = finish(proc)
    assert status == 128 + signal.SIGTERM, err


def test_leaking_command_is_stopped_at_its_memory_limit(spawn, state_dir, tmp_path):
    script = child_script(tmp_path, "leak.py", """
        import signal, sys, time
        signal.signal(signal.SIGTERM, lambda *a: (print("leaker: got SIGTERM", flush=True), sys.exit(0)))
        hoard = []
        while True:
            hoard.append(b"x" * (8 * 1024 * 1024))  # 40 MB/s, pages touched
            time.sleep(0.2)
    """)
    proc = spawn([*RUN, "--health-port", "0", "--memory-limit", "120MB", "--grace", "5s", "--", PYTHON, script])
    status, out, err = finish(proc)
    assert status == ExitStatus.MEMORY_LIMIT, out + err
    assert "memory_limit" in err and "over the limit 120.0 MB" in err
    assert "leaker: got SIGTERM" in out  # a graceful stop first, not a kill


def test_fast_leak_past_the_hard_ceiling_is_killed_at_once(spawn, state_dir, tmp_path):
    script = child_script(tmp_path, "burst.py", """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        hoard = bytearray(200 * 1024 * 1024)  # far past 1.25 x 64 MB in one go
        time.sleep(60)
    """)
    proc = spawn([*RUN, "--health-port", "0", "--memory-limit", "64", "--", PYTHON, script])
    status, _out, err = finish(proc)
    assert status == ExitStatus.MEMORY_HARD_LIMIT, err
    assert "hard ceiling" in err


def test_max_runtime_stops_the_command(spawn, state_dir):
    proc = spawn([*RUN, "--health-port", "0", "--max-runtime", "1s", "--", "sleep", "60"])
    status, _out, err = finish(proc)
    assert status == ExitStatus.MAX_RUNTIME, err
    assert "max_runtime" in err


def test_a_command_ignoring_sigterm_is_killed_after_grace(spawn, state_dir, tmp_path):
    ready = tmp_path / "ready"
    script = child_script(tmp_path, "stubborn.py", f"""
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        open({str(ready)!r}, "w").write("ready")
        time.sleep(60)
    """)
    proc = spawn([*RUN, "--health-port", "0", "--max-runtime", "1s", "--grace", "1s", "--", PYTHON, script])
    wait_for_file(ready, proc=proc)
    status, _out, err = finish(proc)
    assert status == ExitStatus.GRACE_EXCEEDED, err
    assert "did not stop within the grace" in err


def test_second_signal_kills_at_once(spawn, state_dir, tmp_path):
    ready = tmp_path / "ready"
    script = child_script(tmp_path, "stubborn.py", f"""
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        open({str(ready)!r}, "w").write("ready")
        time.sleep(60)
    """)
    proc = spawn([*RUN, "--health-port", "0", "--grace", "60s", "--", PYTHON, script])
    wait_for_file(ready, proc=proc)
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGINT)
    status, _out, err = finish(proc, timeout=30)  # far less than the 60 s grace
    assert status == ExitStatus.GRACE_EXCEEDED, err


@pytest.mark.slow
def test_cpu_hog_is_stopped_at_its_cpu_limit(spawn, state_dir):
    proc = spawn([
        *RUN, "--health-port", "0", "--cpu-limit", "20", "--cpu-window", "2s", "--",
        PYTHON, "-c", "while True: pass",
    ])
    status, _out, err = finish(proc)
    assert status == ExitStatus.CPU_LIMIT, err
    assert "cpu_limit" in err


def test_orphaned_grandchildren_are_stopped_when_the_command_ends(spawn, state_dir, tmp_path):
    pidfile = tmp_path / "grandchild.pid"
    script = child_script(tmp_path, "forker.py", f"""
        import subprocess
        # A grandchild in its own session, left behind on purpose.
        p = subprocess.Popen(["sleep", "300"], start_new_session=True)
        open({str(pidfile)!r}, "w").write(str(p.pid))
    """)
    proc = spawn([*RUN, "--health-port", "0", "--grace", "2s", "--", PYTHON, script])
    status, _out, err = finish(proc)
    assert status == 0, err
    grandchild = int(pidfile.read_text())
    assert not psutil.pid_exists(grandchild) or psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE
    assert "leftover process" in err


def test_the_command_carries_the_instance_marker(spawn, state_dir, tmp_path):
    out_file = tmp_path / "marker"
    proc = spawn([
        *RUN, "--health-port", "0", "--name", "marked", "--",
        PYTHON, "-c", f"import os; open({str(out_file)!r}, 'w').write(os.environ['PROCGUARD_INSTANCE'])",
    ])
    status, _out, err = finish(proc)
    assert status == 0, err
    assert out_file.read_text().startswith("marked:")


def _get_json(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_health_is_served_for_the_command(spawn, state_dir):
    port = free_port()
    proc = spawn([*RUN, "--health-port", str(port), "--", "sleep", "60"])
    child = sleep_child(proc)

    def healthy():
        try:
            return _get_json(f"http://127.0.0.1:{port}/health")
        except OSError:
            return None

    _status, body = wait_for(lambda: (h := healthy()) and h[0] == 200 and h, message="200 from /health")
    assert body["reason"] == "healthy"
    metrics_status, metrics = wait_for(
        lambda: (m := _get_json(f"http://127.0.0.1:{port}/metrics")) and m[1]["metrics"]["memory_mb"] > 0 and m,
        message="a sampled /metrics",
    )
    assert metrics_status == 200
    assert metrics["metrics"]["pid"] == child.pid
    proc.send_signal(signal.SIGTERM)
    assert finish(proc)[0] == 128 + signal.SIGTERM


def test_second_instance_is_refused_and_replace_takes_over(spawn, state_dir):
    first = spawn([*RUN, "--health-port", "0", "--name", "solo", "--grace", "5s", "--", "sleep", "60"])
    sleep_child(first)
    second = spawn([*RUN, "--health-port", "0", "--name", "solo", "--", "sleep", "60"])
    status, _out, err = finish(second)
    assert status == ExitStatus.ALREADY_RUNNING, err
    assert f"PID {first.pid}" in err
    assert len(err.strip().splitlines()) == 1

    third = spawn([*RUN, "--health-port", "0", "--name", "solo", "--replace", "--", "sleep", "60"])
    # The first runner is stopped (it forwards SIGTERM to its sleep) and the third one runs.
    first_status = first.wait(timeout=30)
    assert first_status == 128 + signal.SIGTERM, read_output(first)
    sleep_child(third)
    third.send_signal(signal.SIGTERM)
    assert finish(third)[0] == 128 + signal.SIGTERM


def test_runner_death_takes_the_command_with_it(spawn, state_dir):
    proc = spawn([*RUN, "--health-port", "0", "--", "sleep", "60"])
    child = sleep_child(proc)
    proc.kill()  # no chance to clean up: the parent-death signal does it
    proc.wait(timeout=10)
    _gone, alive = psutil.wait_procs([child], timeout=10)
    assert not alive


def test_name_defaults_to_the_program(spawn, state_dir):
    proc = spawn([*RUN, "--health-port", "0", "--", "sleep", "60"])
    record = wait_for(
        lambda: (r := read_instance("sleep")) is not None and r.live and "child_pid" in r.info and r,
        message="a live 'sleep' instance with its child recorded",
    )
    assert record.pid == proc.pid
    assert record.info["child_pid"] == sleep_child(proc).pid
    proc.send_signal(signal.SIGTERM)
    finish(proc)


def _ready_status(port: int) -> int | None:
    try:
        return _get_json(f"http://127.0.0.1:{port}/ready")[0]
    except OSError:
        return None


def test_drain_delay_turns_not_ready_first_then_forwards_sigterm(spawn, state_dir, tmp_path):
    """On SIGTERM /ready is 503 at once while the command keeps working; SIGTERM reaches it after the drain."""
    ready = tmp_path / "ready"
    termed = tmp_path / "termed"
    script = child_script(tmp_path, "drained.py", f"""
        import signal, sys, time
        def on_term(*args):
            open({str(termed)!r}, "w").write("termed")
            sys.exit(0)
        signal.signal(signal.SIGTERM, on_term)
        open({str(ready)!r}, "w").write("ready")
        time.sleep(120)
    """)
    port = free_port()
    proc = spawn([*RUN, "--health-port", str(port), "--drain-delay", "4s", "--grace", "10s", "--", PYTHON, script])
    wait_for_file(ready, proc=proc)
    wait_for(lambda: _ready_status(port) == 200, message="/ready 200 before the stop")
    proc.send_signal(signal.SIGTERM)
    wait_for(lambda: _ready_status(port) == 503, message="/ready 503 at once on SIGTERM")
    # Draining: not ready, but the command still runs and has not been signalled (4 s to go).
    assert not termed.exists()
    assert proc.poll() is None
    assert wait_for_file(termed, proc=proc) == "termed"  # forwarded once the drain is over
    status, _out, err = finish(proc)
    assert status == 0, err  # the command's own status after a forwarded signal
    assert "draining for 4s" in err and "forwarding SIGTERM" in err


def test_second_signal_during_the_drain_kills_at_once(spawn, state_dir):
    port = free_port()
    proc = spawn([*RUN, "--health-port", str(port), "--drain-delay", "120s", "--", "sleep", "60"])
    sleep_child(proc)
    wait_for(lambda: _ready_status(port) == 200, message="/ready 200 before the stop")
    proc.send_signal(signal.SIGTERM)
    wait_for(lambda: _ready_status(port) == 503, message="/ready 503 during the drain")
    proc.send_signal(signal.SIGINT)
    status, _out, err = finish(proc, timeout=30)  # far less than the 120 s drain
    assert status == ExitStatus.GRACE_EXCEEDED, err
