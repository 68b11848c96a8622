"""Poisoned lock files and forced PID reuse: nothing is signalled, starts still work.

A lock record is data anyone with write access to the state directory
could have planted, or a leftover from a process long gone whose PID now
belongs to somebody else. ``procguard cleanup``, ``--replace`` and a plain
start must never act on it: the canaries below log every catchable signal
they receive, and must log none.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import psutil
import pytest

from procguard.errors import AlreadyRunningError
from procguard.instances.identity import boot_id
from procguard.instances.lock import InstanceLock, lock_path, read_instance
from procguard.instances.replace import acquire_instance
from procguard.procstat import start_ticks

from .helpers import PROCGUARD, PYTHON, python_env, wait_for, wait_for_file
from .test_lock import assert_untouched, start_canary


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PROCGUARD, *args], env=python_env(), capture_output=True, text=True, timeout=timeout, check=False
    )


def _record(pid: object, create_time: object, **extra: object) -> str:
    data = {"version": 1, "name": "poisoned", "pid": pid, "create_time": create_time,
            "boot_id": boot_id(), "cmdline": ["x"], "health_port": None, "marker": None, "info": {}}
    data.update(extra)
    return json.dumps(data)


def _write_poison(content: str | bytes) -> Path:
    path = lock_path("poisoned")
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    os.chmod(path, 0o600)
    return path


@pytest.fixture
def canary(spawn, tmp_path: Path):
    """A same-user process in our process group that logs any signal it gets."""
    proc, log = start_canary(spawn, tmp_path, "group")
    return proc, log


def _poisons(canary_pid: int) -> dict[str, str | bytes]:
    init = psutil.Process(1)
    me = psutil.Process(canary_pid)
    return {
        "pid 0": _record(0, 1.0),
        "pid -1": _record(-1, 1.0),
        "pid 1 with its real start time": _record(1, init.create_time(), start_ticks=start_ticks(1)),
        "text": "this is not json at all\n",
        "binary": b"\x00\xff" * 100,
        "json list": json.dumps([canary_pid]),
        "huge": _record(canary_pid, me.create_time(), padding="x" * 2_000_000),
        "pid as string": _record(str(canary_pid), me.create_time()),
        "float pid": _record(float(canary_pid), me.create_time()),
        # A perfectly valid identity of a live process, but nobody holds the lock: stale.
        "stale but matching": _record(canary_pid, me.create_time(), start_ticks=start_ticks(canary_pid)),
    }


POISON_KINDS = list(_poisons(os.getpid()))


@pytest.mark.parametrize("kind", POISON_KINDS)
def test_poisoned_record_is_never_acted_on(state_dir: Path, canary, kind: str) -> None:
    proc, log = canary
    _write_poison(_poisons(proc.pid)[kind])

    result = run_cli("cleanup", "poisoned", "--grace", "1", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["processes"] == []
    # (Never a real 'cleanup all' here: it would stop other test suites' marked processes.)
    with acquire_instance("poisoned", replace=True, grace_s=1) as lock:
        assert lock.held
        assert read_instance("poisoned").pid == os.getpid()
    assert_untouched(proc, log)


def test_poisoned_record_naming_another_users_process(state_dir: Path, spawn, canary) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to start a process as another user")
    other = spawn(["sleep", "600"], user=65534)
    theirs = psutil.Process(other.pid)
    _write_poison(_record(other.pid, theirs.create_time(), start_ticks=start_ticks(other.pid)))
    result = run_cli("cleanup", "poisoned", "--grace", "1", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["processes"] == []
    InstanceLock.acquire("poisoned").release()
    assert theirs.is_running() and theirs.status() != psutil.STATUS_ZOMBIE
    assert_untouched(*canary)


def test_symlinked_lock_file_is_replaced_not_followed(state_dir: Path, tmp_path: Path) -> None:
    victim = tmp_path / "precious.txt"
    victim.write_text("do not truncate me")
    path = lock_path("poisoned")
    path.symlink_to(victim)
    assert read_instance("poisoned").error  # reported, not followed
    with InstanceLock.acquire("poisoned"):
        assert not path.is_symlink()
    assert victim.read_text() == "do not truncate me"


HELD_POISON = r"""
import fcntl, os, sys, time
path, record, ready = sys.argv[1], sys.argv[2], sys.argv[3]
fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
os.ftruncate(fd, 0)
os.write(fd, record.encode())
open(ready, "w").write(str(os.getpid()))
time.sleep(600)
"""


def test_forced_pid_reuse_impostor_is_untouched(state_dir: Path, spawn, tmp_path: Path, canary) -> None:
    """The lock is held, but the record's pid now belongs to an impostor (start time differs)."""
    impostor, log = canary
    me = psutil.Process(impostor.pid)
    record = _record(impostor.pid, me.create_time() - 1000.0, start_ticks=(start_ticks(impostor.pid) or 0) + 7)
    ready = tmp_path / "held.ready"
    holder = spawn([PYTHON, "-c", HELD_POISON, str(lock_path("poisoned")), record, str(ready)])
    wait_for_file(ready, proc=holder)

    result = run_cli("cleanup", "poisoned", "--grace", "1", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["processes"] == []
    spared = {s["pid"]: s["reason"] for s in report["spared"]}
    assert "recycled" in spared[impostor.pid]

    # A plain start is refused, naming the real holder (from the kernel), not the impostor.
    with pytest.raises(AlreadyRunningError) as excinfo:
        InstanceLock.acquire("poisoned")
    assert excinfo.value.pid == holder.pid
    # --replace cannot confirm whom to stop, so it stops nobody and gives up.
    with pytest.raises(AlreadyRunningError, match="--replace could not stop it"):
        acquire_instance("poisoned", replace=True, grace_s=0.2)
    assert holder.poll() is None
    assert_untouched(impostor, log)


def test_held_lock_with_garbage_record_is_refused_cleanly(state_dir: Path, spawn, tmp_path: Path) -> None:
    ready = tmp_path / "held.ready"
    holder = spawn([PYTHON, "-c", HELD_POISON, str(lock_path("poisoned")), "garbage", str(ready)])
    wait_for_file(ready, proc=holder)
    with pytest.raises(AlreadyRunningError) as excinfo:
        InstanceLock.acquire("poisoned")
    assert excinfo.value.pid == holder.pid
    result = run_cli("cleanup", "poisoned", "--grace", "1", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["processes"] == []
    assert any("cannot confirm" in note for note in report["notes"])
    assert holder.poll() is None


def test_lock_file_owned_by_someone_else_is_refused(state_dir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to chown")
    path = _write_poison("")
    os.chown(path, 65534, 65534)
    from procguard.errors import StateDirError

    with pytest.raises(StateDirError, match="owned by uid 65534"):
        InstanceLock.acquire("poisoned")


def _hard_linked_lock(tmp_path: Path, name: str) -> tuple[Path, Path]:
    victim = tmp_path / "precious.json"
    victim.write_text('{"keep": "me"}')
    path = lock_path(name)
    os.link(victim, path)
    return path, victim


def test_hard_linked_lock_file_is_locked_but_never_written(state_dir: Path, tmp_path: Path, caplog) -> None:
    path, victim = _hard_linked_lock(tmp_path, "linked")
    with caplog.at_level("WARNING", logger="procguard.instances.lock"), InstanceLock.acquire("linked") as lock:
        assert lock.held
        with pytest.raises(AlreadyRunningError):  # single instance still holds
            InstanceLock.acquire("linked")
        lock.update({"restarts": 1}, health_port=1234)
        assert victim.read_text() == '{"keep": "me"}'
        record = read_instance("linked")
        assert record.held and record.data == {} and "2 hard links" in (record.error or "")
    assert victim.read_text() == '{"keep": "me"}'  # release does not truncate it either
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and str(path) in warnings[0] and "hard links" in warnings[0]


def test_a_run_starts_on_a_hard_linked_lock_file_and_ps_shows_it(state_dir: Path, tmp_path: Path, spawn) -> None:
    _path, victim = _hard_linked_lock(tmp_path, "linked")
    runner = spawn([*PROCGUARD, "run", "--name", "linked", "--health-port", "0", "--", "sleep", "60"])

    def listed() -> dict | None:
        if runner.poll() is not None:
            raise AssertionError(f"the start was refused: {runner.returncode} {runner.stderr.read().decode()}")
        rows = json.loads(run_cli("ps", "--json").stdout)
        return rows[0] if rows and rows[0]["pid"] == runner.pid else None

    row = wait_for(listed, message="ps to list the linked instance")
    assert (row["name"], row["state"], row["command"]) == ("linked", "unconfirmed", "")
    assert "hard links" in row["error"]
    second = run_cli("run", "--name", "linked", "--health-port", "0", "--", "sleep", "60")
    assert second.returncode == 3 and f"PID {runner.pid}" in second.stderr
    runner.terminate()
    assert runner.wait(timeout=30) == 143
    assert victim.read_text() == '{"keep": "me"}'
