"""Shared test helpers: waiting with a deadline, spawning and reaping children.

Every wait here has a deadline on ``time.monotonic()`` and a message that
says what was awaited; every spawned process is registered for teardown at
the moment it is spawned (see the ``spawn`` fixture in conftest.py).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import psutil

#: One deadline for "this should happen promptly" waits (psutil's tests use 5 s);
#: generous because this machine is shared and noisy.
GLOBAL_TIMEOUT = 15.0

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parent.parent


def wait_for(
    predicate: Callable[[], T],
    *,
    timeout: float = GLOBAL_TIMEOUT,
    interval: float = 0.02,
    message: str | Callable[[], str] = "condition",
) -> T:
    """Poll ``predicate`` until it returns a truthy value; fail after ``timeout``.

    ``message`` (or a callable producing it, evaluated at failure time so it can
    include a child's output) says what was awaited.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {text}")
        time.sleep(interval)


def wait_for_file(path: Path, *, timeout: float = GLOBAL_TIMEOUT, proc: subprocess.Popen[bytes] | None = None) -> str:
    """Wait until ``path`` exists and is non-empty; fail at once if ``proc`` died first."""

    def ready() -> str | None:
        if path.exists():
            text = path.read_text()
            if text:
                return text
        if proc is not None and proc.poll() is not None:
            out = read_output(proc)
            raise AssertionError(f"subprocess died (exit {proc.returncode}) before writing {path}:\n{out}")
        return None

    return wait_for(ready, timeout=timeout, message=f"file {path}")


def read_output(proc: subprocess.Popen[bytes]) -> str:
    """Whatever the (finished) process wrote, for failure messages."""
    try:
        out, err = proc.communicate(timeout=5)
    except (subprocess.TimeoutExpired, ValueError):
        return "<output unavailable>"
    return f"stdout:\n{(out or b'').decode(errors='replace')}\nstderr:\n{(err or b'').decode(errors='replace')}"


def stop_process_tree(
    proc: subprocess.Popen[bytes] | subprocess.Popen[str] | psutil.Process, *, grace: float = 5.0
) -> None:
    """Stop ``proc`` and all its descendants: SIGTERM, wait ``grace``, SIGKILL, reap."""
    if isinstance(proc, subprocess.Popen) and proc.poll() is not None:
        return  # already reaped: its pid may belong to someone else by now
    try:
        root = proc if isinstance(proc, psutil.Process) else psutil.Process(proc.pid)
        if not root.is_running():  # psutil compares the creation time: no recycled pid
            return
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        procs = []
    for p in procs:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.Error:
            pass
    _gone, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=grace)
    if isinstance(proc, subprocess.Popen):
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (prefer binding port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive TCP ports on 127.0.0.1 that were free a moment ago.

    Taken below the kernel's ephemeral range, so that no outgoing connection
    (of this test or of anything else on the machine) is handed one of them
    meanwhile, as happens to neighbours of a port 0 gave out.
    """
    import random

    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(200):
        first = random.randrange(20000, min(low, 32768) - count)
        sockets = []
        try:
            for port in range(first, first + count):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    msg = f"no {count} consecutive free ports"
    raise RuntimeError(msg)


def python_env(**extra: str) -> dict[str, str]:
    """Environment for a child Python that imports procguard and the repo's examples."""
    env = dict(os.environ)
    paths = [str(REPO_ROOT / "src"), str(REPO_ROOT)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


#: A namespace id for markers of processes a test starts by hand, outside any
#: state directory's cleanups (a real directory hashes to it once in 2**32).
TEST_NAMESPACE = "7e57ab1e"

PYTHON = sys.executable
PROCGUARD = [PYTHON, "-m", "procguard"]
