"""Fixtures shared by the whole suite.

- Before anything runs, the suite's *default* procguard state directory is
  moved into a session temp dir (``XDG_RUNTIME_DIR`` and ``TMPDIR`` point
  there, ``PROCGUARD_STATE_DIR`` is unset): a procguard the suite starts
  without its own state directory lands there, never in the user's.
- A bystander stack runs in that default state directory for the whole
  session, with the example stack's names and the names the tests use most;
  at the end its workers must be the very same processes, never restarted,
  never stopped. The regression test for "make test beside make demo".
- The pytest process makes itself a child subreaper, so a test's escaped
  grandchild is re-parented here rather than to init, and the end-of-session
  check below sees it: a suite that leaves processes behind fails.
- ``spawn`` starts a real child and registers its teardown at once.
- ``state_dir`` gives each test its own procguard state directory.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from .helpers import PROCGUARD, PYTHON, free_port, python_env, stop_process_tree, wait_for

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


_SUITE_ROOT: Path | None = None
#: Set when a failure left something in the session temp dir worth reading.
_KEEP_SUITE_ROOT = pytest.StashKey[bool]()


def pytest_configure(config: pytest.Config) -> None:
    """Before anything runs: the suite's default state directory is its own, never the user's."""
    global _SUITE_ROOT
    _SUITE_ROOT = Path(tempfile.mkdtemp(prefix="procguard-suite-"))
    for name, var in (("run", "XDG_RUNTIME_DIR"), ("tmp", "TMPDIR")):
        path = _SUITE_ROOT / name
        path.mkdir(mode=0o700)
        os.environ[var] = str(path)
    os.environ.pop("PROCGUARD_STATE_DIR", None)


#: The bystander: the example stack's project and worker names (a command with a
#: health port run through procguard run, a function worker, a plain command), and
#: project teststack with the worker names the supervisor tests use most.
_SLEEP = [PYTHON, "-c", "import time; time.sleep(86400)"]
_BYSTANDERS = {
    "analyticbot": {
        "api": {"command": _SLEEP, "health_port": None},  # a free port, chosen at start
        "collector": {"run": "tests.supervisor_workers.targets:idle", "interval": "1h"},
        "bot": {"command": ["sleep", "86400"]},
    },
    "teststack": {name: {"command": ["sleep", "86400"]} for name in ("ticker", "api", "worker", "t", "a", "bot")},
}


def _bystander_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = python_env(PROCGUARD_LOG_LEVEL="WARNING")
    env.pop("PROCGUARD_STATE_DIR", None)  # the suite's default state directory
    return subprocess.run([*PROCGUARD, *args], env=env, capture_output=True, text=True, timeout=120, check=False)


def _bystander_config(directory: Path, project: str) -> Path:
    from .supervisor_workers.stackkit import write_config

    workers = {name: dict(keys) for name, keys in _BYSTANDERS[project].items()}
    for keys in workers.values():
        if "health_port" in keys:
            keys["health_port"] = free_port()
    (directory / project).mkdir(parents=True)
    return write_config(directory / project, workers, project=project, defaults={"grace": "5s"})


def _bystander_workers(config: Path) -> dict[str, dict[str, Any]]:
    result = _bystander_cli("status", "--json", "-c", str(config))
    return {w["name"]: w for w in json.loads(result.stdout)} if result.returncode == 0 else {}


@pytest.fixture(scope="session", autouse=True)
def _bystander_stack(request: pytest.FixtureRequest, _no_leftover_processes: None) -> Iterator[None]:
    """A live stack in the suite's default state directory that no test may touch.

    Started once (``procguard up -d``, no state directory given); at the end
    of the session every worker must have the PID it had at the start, 0
    restarts and no stop row in history. It is brought down whatever happens.
    """
    assert _SUITE_ROOT is not None
    configs = [_bystander_config(_SUITE_ROOT / "bystander", project) for project in _BYSTANDERS]
    supervisors: list[int] = []
    try:
        for config in configs:
            result = _bystander_cli("up", "-d", "-c", str(config), "--status-port", "0")
            if result.returncode != 0:
                pytest.fail(f"bystander stack {config} did not start:\n{result.stdout}{result.stderr}")
            supervisors.append(int(result.stdout.split("supervisor PID ")[1].split(")")[0]))
        before = {
            config: wait_for(
                lambda config=config: (workers := _bystander_workers(config))
                and all(w["state"] == "running" for w in workers.values())
                and {name: w["pid"] for name, w in workers.items()},
                timeout=60,
                message=lambda config=config: f"bystander {config} running: {_bystander_workers(config)}",
            )
            for config in configs
        }
        yield
        for config, pids in before.items():
            project = config.parent.name
            after = _bystander_workers(config)
            changed = {
                name: (pid, after.get(name, {}).get("pid"), after.get(name, {}).get("restarts"))
                for name, pid in pids.items()
                if after.get(name, {}).get("pid") != pid or after.get(name, {}).get("restarts") != 0
            }
            history = _bystander_cli("history", "--json", "-n", "0", "--project", project)
            stops = [e for e in json.loads(history.stdout or "[]") if e["event"] == "stop"]
            if changed or stops or history.returncode != 0:
                request.config.stash[_KEEP_SUITE_ROOT] = True
            assert not changed and not stops and history.returncode == 0, (
                f"the suite touched the bystander stack {project} in the default state directory "
                f"{_SUITE_ROOT / 'run' / 'procguard'} (kept; see its logs/{project}/): "
                f"(started pid, pid now, restarts) {changed}, stop rows {stops} {history.stderr}"
            )
    finally:
        for config in configs:
            _bystander_cli("down", "-c", str(config))
        for pid in supervisors:
            try:
                psutil.Process(pid).wait(timeout=30)  # reaped here: the suite is their subreaper
            except psutil.Error:
                pass


def pytest_unconfigure(config: pytest.Config) -> None:
    """The session temp dir goes, unless a failure left something in it worth reading."""
    if _SUITE_ROOT is not None and not config.stash.get(_KEEP_SUITE_ROOT, False):
        shutil.rmtree(_SUITE_ROOT, ignore_errors=True)


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
