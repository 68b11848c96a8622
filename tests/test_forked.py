"""call_in_fork: a start-up task runs in a forked child and its imports stay there.

The scripts run in a fresh interpreter: the fork path needs a single-threaded
parent, which a test process cannot promise.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

from procguard.instances.forked import call_in_fork

from .helpers import PROCGUARD, python_env, read_output, wait_for


def _run(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=python_env(),
                          capture_output=True, text=True, timeout=60, check=False)


def test_result_comes_from_a_child_and_its_imports_stay_there() -> None:
    result = _run("""
        import json, os, sys
        from procguard.instances.forked import call_in_fork

        def task():
            import colorsys  # noqa: F401 - loaded by nothing else here
            return {"pid": os.getpid(), "loaded": "colorsys" in sys.modules}

        answer = call_in_fork(task)
        print(json.dumps([answer["pid"] != os.getpid(), answer["loaded"], "colorsys" in sys.modules]))
    """)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [True, True, False]


def test_a_failing_child_falls_back_to_running_the_task_here() -> None:
    result = _run("""
        import os
        from procguard.instances.forked import call_in_fork

        parent = os.getpid()

        def task():
            if os.getpid() != parent:
                raise RuntimeError("fails in the child only")
            return "in-process"

        print(call_in_fork(task))
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "in-process"


def test_an_error_of_the_task_reaches_the_caller() -> None:
    result = _run("""
        from procguard.instances.forked import call_in_fork

        def task():
            raise ValueError("bad stack file")

        call_in_fork(task)
    """)
    assert result.returncode == 1
    assert "ValueError: bad stack file" in result.stderr


def test_with_threads_running_the_task_runs_in_process() -> None:
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, daemon=True)
    thread.start()
    try:
        assert call_in_fork(os.getpid) == os.getpid()
    finally:
        stop.set()
        thread.join(timeout=5)


def test_up_supervises_without_psutil_loaded(tmp_path: Path, state_dir: Path, spawn: Any) -> None:
    """The stale scan at start-up uses psutil in a child; the supervisor never maps it."""
    config = tmp_path / "procguard.toml"
    config.write_text('[project]\nname = "lean"\n\n[workers.one]\ncommand = "sleep 1000"\n')
    proc = spawn([*PROCGUARD, "up", "-c", str(config)], env=python_env(PROCGUARD_STATE_DIR=str(state_dir)))

    def worker_running() -> bool:
        if proc.poll() is not None:
            raise AssertionError(read_output(proc))
        status = subprocess.run([*PROCGUARD, "status", "--json", "-c", str(config)],
                                env=python_env(PROCGUARD_STATE_DIR=str(state_dir)),
                                capture_output=True, text=True, timeout=30, check=False)
        return status.returncode == 0 and any(w["state"] == "running" for w in json.loads(status.stdout))

    wait_for(worker_running, timeout=30, interval=0.2, message="worker 'one' running")
    maps = Path(f"/proc/{proc.pid}/maps").read_text()
    assert "_psutil_linux" not in maps
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) in (0, 130)
