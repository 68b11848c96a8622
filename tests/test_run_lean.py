"""A standalone ``procguard run`` stays small: what it loads, and its tree helpers on real processes.

The runner's budget beside the command is 15 MB of RSS, runner and watchdog
together; a bare interpreter is already 8-9 MB of it. So the command-mode
runner must not load psutil (it reads /proc itself), the HTTP server (only
with a health port), socket (only under ``procguard up``), shutil or asyncio,
and a function worker loads asyncio only for an async target.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from procguard.instances.childproc import tree_pids
from procguard.runner.tree import TreeSampler, kill_tree, stop_pids

from .helpers import PROCGUARD, PYTHON, python_env, wait_for

#: Modules a standalone runner has no use for (each is hundreds of kB of RSS).
HEAVY = ("psutil", "shutil", "asyncio", "socket", "http.server", "procguard.health.server",
         "procguard.sampler", "procguard.proctree", "procguard.instances.guardian", "hmac", "_hashlib")

PROBE = """
import sys
from procguard.cli.main import main
status = main(sys.argv[1:])
print(" ".join(m for m in {heavy!r} if m in sys.modules))
print("status", status)
"""


def _loaded(args: list[str], tmp_path: Path, **env: str) -> tuple[list[str], int]:
    result = subprocess.run(
        [PYTHON, "-c", PROBE.format(heavy=HEAVY), *args], capture_output=True, text=True, timeout=60, check=False,
        env=python_env(PROCGUARD_STATE_DIR=str(tmp_path / "state"), **env),
    )
    lines = result.stdout.splitlines()
    assert lines and lines[-1].startswith("status"), result.stderr
    return lines[-2].split(), int(lines[-1].split()[1])


def test_a_command_runner_loads_nothing_heavy(tmp_path: Path) -> None:
    loaded, status = _loaded(["run", "--name", "lean", "--health-port", "0", "--", "sh", "-c", "exit 3"], tmp_path)
    assert status == 3  # the command ran and its status came back
    assert loaded == []


def test_a_command_runner_with_a_health_port_loads_only_the_server(tmp_path: Path) -> None:
    from .helpers import free_port

    loaded, status = _loaded(["run", "--name", "leanport", "--health-port", str(free_port()), "--", "true"],
                             tmp_path)
    assert status == 0
    assert "procguard.health.server" in loaded and "socket" in loaded
    # no OpenSSL (hmac) without a token to check: 3 MB
    assert not {"psutil", "shutil", "asyncio", "procguard.sampler", "hmac", "_hashlib"} & set(loaded)


def test_a_sync_function_worker_loads_no_asyncio(tmp_path: Path) -> None:
    (tmp_path / "leanfn.py").write_text("def work():\n    pass\n\nasync def awork():\n    pass\n")
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), python_env()["PYTHONPATH"]])}
    loaded, status = _loaded(["run", "leanfn:work", "--name", "leanfn", "--health-port", "0", "--once"],
                             tmp_path, **env)
    assert status == 0
    assert "asyncio" not in loaded
    loaded, status = _loaded(["run", "leanfn:awork", "--name", "leanfn", "--health-port", "0", "--once"],
                             tmp_path, **env)
    assert status == 0
    assert "asyncio" in loaded  # an async target still gets its loop


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def test_a_standalone_runner_costs_little_beside_its_command(spawn, tmp_path: Path) -> None:
    """Everything of ``procguard run -- sleep`` that is not ``sleep``, against a bare idle interpreter.

    A Python guardian beside the runner once made it 23 MB over a bare interpreter; the runner's
    watching stage plus its /bin/sh watchdog are now about 6 MB over it.
    """
    bare = spawn([PYTHON, "-c", "import time; time.sleep(600)"])
    runner = spawn([*PROCGUARD, "run", "--name", "leanrss", "--health-port", "0", "--", "sleep", "600"],
                   env=python_env(PROCGUARD_STATE_DIR=str(tmp_path / "state")))

    def family() -> list[int]:
        return tree_pids(runner.pid)

    wait_for(lambda: any(_comm(pid) == "sleep" for pid in family()), message="the command started")
    assert any(_comm(pid) == "sh" for pid in family()), "the watchdog runs beside the runner"

    def over_bare() -> float:
        return sum(_rss_mb(pid) for pid in family() if _comm(pid) != "sleep") - _rss_mb(bare.pid)

    # The runner trims its heap once the command runs: wait for the figure to settle under the bound.
    wait_for(lambda: over_bare() < 8.0, timeout=10, message=lambda: f"{over_bare():.1f} MB over a bare python")


#: What the watching stage (after the runner's exec) must not load: parsing, locks, spawning, dataclasses,
#: and logging before there is something to log.
NOT_WATCHING = ("argparse", "dataclasses", "inspect", "pathlib", "subprocess", "logging", "procguard.lifecycle_args",
                "procguard.instances.lock", "procguard.instances.spawn", "procguard.snapshot", *HEAVY)


def _imported(text: str) -> list[str]:
    """Module names from ``python -X importtime`` lines."""
    return [line.rsplit("|", 1)[1].strip() for line in text.splitlines() if line.startswith("import time:")]


def test_the_runner_execs_into_a_watching_stage_that_loads_only_what_watching_needs(spawn, tmp_path: Path) -> None:
    """Same PID, same command line, the lock still held; the new image imports no parser, lock or spawn code."""
    err = tmp_path / "stderr"
    env = python_env(PROCGUARD_STATE_DIR=str(tmp_path / "state"))
    with err.open("wb") as sink:
        runner = spawn([PYTHON, "-X", "importtime", "-m", "procguard", "run", "--name", "watching",
                        "--health-port", "0", "--", "sleep", "600"], env=env, stderr=sink)

    def watching_stage() -> list[str] | None:
        text = err.read_text(errors="replace")
        if "started 'sleep 600'" not in text:
            return None
        after = _imported(text.split("started 'sleep 600'", 1)[1])
        return after if "procguard.runner.command" in after else None

    after = wait_for(watching_stage, message="the runner's exec into its watching stage")
    with open(f"/proc/{runner.pid}/environ", "rb") as handle:
        assert b"PROCGUARD_RUNNER_WATCH=" in handle.read()  # the same PID, executed again
    with open(f"/proc/{runner.pid}/cmdline", "rb") as handle:
        assert handle.read().split(b"\0")[-3:-1] == [b"sleep", b"600"]  # ps shows what was typed
    assert not set(NOT_WATCHING) & set(after), sorted(set(NOT_WATCHING) & set(after))
    second = subprocess.run([*PROCGUARD, "run", "--name", "watching", "--health-port", "0", "--", "true"],
                            env=env, capture_output=True, text=True, timeout=60, check=False)
    assert second.returncode == 3, second.stderr  # the lock is still held across the exec
    os.kill(runner.pid, signal.SIGTERM)
    assert runner.wait(timeout=60) == 143  # the watching stage stops it gracefully
    log = err.read_text(errors="replace")
    assert "forwarding SIGTERM to pid" in log and "stopped: signal" in log


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as handle:
            return handle.read().strip()
    except OSError:
        return ""


FAMILY = """
import os, sys, time
kids = []
for _ in range(2):
    pid = os.fork()
    if pid == 0:
        time.sleep(600)
        os._exit(0)
    kids.append(pid)
hold = b"x" * (40 * 2**20)
print(" ".join(str(k) for k in kids), flush=True)
time.sleep(600)
"""


def test_tree_sampler_and_kill_tree_on_a_real_family(spawn) -> None:
    family = spawn([PYTHON, "-c", FAMILY])
    assert family.stdout is not None
    kids = [int(pid) for pid in family.stdout.readline().split()]
    wait_for(lambda: set(kids) <= set(tree_pids(family.pid)), message="both children in the tree")
    assert tree_pids(family.pid, excluded={kids[0]}) == [family.pid, kids[1]]
    sampler = TreeSampler(family.pid, cpu_window_s=60.0)
    first = sampler.sample()
    assert first is not None
    assert first.num_children == 2 and first.num_threads == 1
    assert first.memory_bytes > 40 * 2**20  # the parent's 40 MB, plus the three interpreters
    assert first.cpu_percent == 0.0 and first.cpu_window_s == 0.0  # no average from one reading
    time.sleep(0.05)
    second = sampler.sample()
    assert second is not None and second.cpu_window_s > 0
    kill_tree(family.pid)
    assert family.wait(timeout=10) == -signal.SIGKILL
    wait_for(lambda: not [k for k in kids if _running(k)], message="the children were killed too")
    assert sampler.sample() is None


def test_stop_pids_terms_then_kills(spawn) -> None:
    polite = spawn([PYTHON, "-c", "import time; time.sleep(600)"])
    stubborn = spawn([PYTHON, "-c", "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                      "print('ready', flush=True); time.sleep(600)"])
    assert stubborn.stdout is not None and stubborn.stdout.readline().strip() == b"ready"
    started = time.monotonic()
    stop_pids([polite.pid, stubborn.pid], grace_s=0.5)
    assert polite.wait(timeout=10) == -signal.SIGTERM
    assert stubborn.wait(timeout=10) == -signal.SIGKILL
    assert time.monotonic() - started >= 0.5  # the stubborn one got its grace


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except OSError:
        return False


def test_check_command_finds_programs_like_a_shell(tmp_path: Path, monkeypatch) -> None:
    from procguard.errors import UsageError
    from procguard.runner.command import check_command

    tool = tmp_path / "tool"
    tool.write_text("#!/bin/sh\n")
    plain = tmp_path / "plain"
    plain.write_text("")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}/usr/bin{os.pathsep}/bin")
    assert check_command(["tool"]) == str(tool)
    for bad in (["plain"], ["nosuchtool"], [str(tmp_path)]):
        try:
            check_command(bad)
        except UsageError:
            continue
        raise AssertionError(f"{bad} accepted")


def test_a_running_sync_function_worker_holds_no_psutil(spawn, tmp_path: Path) -> None:
    """psutil (with what it imports, about 2 MB) is loaded only when a sample needs it, not to watch
    the worker's own memory and CPU from /proc."""
    (tmp_path / "idlefn.py").write_text("def work():\n    pass\n")
    env = python_env(PROCGUARD_STATE_DIR=str(tmp_path / "state"),
                     PYTHONPATH=os.pathsep.join([str(tmp_path), python_env()["PYTHONPATH"]]))
    worker = spawn([*PROCGUARD, "run", "idlefn:work", "--name", "idlefn", "--health-port", "0", "--interval", "0.05"],
                   env=env)

    def threads() -> int:
        try:
            return len(os.listdir(f"/proc/{worker.pid}/task"))
        except OSError:
            return 0

    wait_for(lambda: threads() >= 2 or worker.poll() is not None, message="the manager's monitor thread runs")
    assert worker.poll() is None
    with open(f"/proc/{worker.pid}/maps") as handle:
        maps = handle.read()
    assert "_psutil" not in maps and "_asyncio" not in maps and "_ssl" not in maps
