"""Fixtures shared by the whole suite.

- The pytest process makes itself a child subreaper, so a test's escaped
  grandchild is re-parented here rather than to init, and the end-of-session
  check below sees it: a suite that leaves processes behind fails.
- ``spawn`` starts a real child and registers its teardown at once.
- ``state_dir`` gives each test its own procguard state directory.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from .helpers import python_env, stop_process_tree

_PR_SET_CHILD_SUBREAPER = 36


def _become_subreaper() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


@pytest.fixture(scope="session", autouse=True)
def _no_leftover_processes() -> Iterator[None]:
    _become_subreaper()
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    yield
    leftovers = [p for p in me.children(recursive=True) if p.pid not in before]
    _gone, alive = psutil.wait_procs(leftovers, timeout=5)
    if alive:
        described = []
        for p in alive:
            try:
                described.append(f"{p.pid}: {' '.join(p.cmdline())[:150]}")
            except psutil.Error:
                described.append(str(p.pid))
        for p in alive:
            stop_process_tree(p, grace=2)
        pytest.fail("processes left running by the suite:\n" + "\n".join(described))


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private procguard state directory, also exported as PROCGUARD_STATE_DIR."""
    path = tmp_path / "state"
    monkeypatch.setenv("PROCGUARD_STATE_DIR", str(path))
    return path


Spawn = Callable[..., "subprocess.Popen[bytes]"]


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Start a real subprocess; it and its descendants are stopped at teardown.

    ``spawn(argv, **popen_kwargs)``; the environment defaults to one that can
    import procguard and the examples; stdout/stderr default to pipes.
    """
    started: list[subprocess.Popen[bytes]] = []

    def _spawn(argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        kwargs.setdefault("env", python_env())
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        proc = subprocess.Popen(argv, **kwargs)
        started.append(proc)
        return proc

    yield _spawn
    for proc in reversed(started):
        stop_process_tree(proc, grace=3)
        for stream in (proc.stdout, proc.stderr, proc.stdin):
            if stream is not None:
                stream.close()


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never inherit a marker or a systemd socket from the shell running them."""
    for var in ("PROCGUARD_INSTANCE", "NOTIFY_SOCKET", "WATCHDOG_USEC", "PROCGUARD_HEALTH_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    os.environ.setdefault("PROCGUARD_LOG_LEVEL", "INFO")
