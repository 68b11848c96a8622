"""The state directory is a namespace: two of them never touch each other's processes.

Real stacks, real runners, real cleanups, each in its own temp state
directory, with the same project, worker and instance names on both sides.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from procguard.instances.lock import list_instances
from procguard.instances.marker import MARKER_ENV, parse_marker, read_marker
from procguard.instances.statedir import namespace_of
from procguard.supervisor.control import NotRunningError, request, socket_path

from .helpers import PROCGUARD, PYTHON, free_port, python_env, wait_for
from .supervisor_workers.stackkit import alive, worker_cmd, write_config

SLEEP = [PYTHON, "-c", "import time; time.sleep(600)"]


def cli(*args: str, state_dir: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``procguard ARGS``; the state directory by environment when given, else only by flag (if any)."""
    env = python_env(PROCGUARD_LOG_LEVEL="WARNING")
    env.pop("PROCGUARD_STATE_DIR", None)
    if state_dir is not None:
        env["PROCGUARD_STATE_DIR"] = str(state_dir)
    return subprocess.run([*PROCGUARD, *args], env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)


def status(state_dir: Path, project: str) -> dict[str, dict[str, Any]]:
    """``{worker: status object}`` from the supervisor of ``project`` on ``state_dir`` ({} if none)."""
    try:
        reply = request(socket_path(state_dir, project), {"cmd": "status"}, project=project, timeout=10)
    except (NotRunningError, OSError):
        return {}
    return {w["name"]: w for w in reply["workers"]}


def stop_rows(state_dir: Path, project: str) -> list[dict[str, Any]]:
    result = cli("history", "--json", "-n", "0", "--project", project, "--state-dir", str(state_dir))
    assert result.returncode == 0, result.stderr
    return [e for e in json.loads(result.stdout) if e["event"] == "stop"]


@pytest.fixture
def stacks() -> Iterator[list[tuple[Path, Path]]]:
    """(config, state dir) of the stacks a test starts; each is brought down at teardown."""
    started: list[tuple[Path, Path]] = []
    yield started
    for config, state_dir in started:
        cli("down", "-c", str(config), "--state-dir", str(state_dir))


def test_two_stacks_of_the_same_names_leave_each_other_alone(tmp_path: Path, stacks) -> None:
    """The four-line repro: the second stack's start-up sweep used to stop the first one's worker."""
    config = tmp_path / "a.toml"
    config.write_text('[project]\nname="dup"\n[workers.w]\ncommand="sleep 300"\n')
    s1, s2 = tmp_path / "s1", tmp_path / "s2"
    stacks += [(config, s1), (config, s2)]
    first = cli("up", "-d", "-c", str(config), state_dir=s1)
    assert first.returncode == 0, first.stderr
    pid = wait_for(lambda: status(s1, "dup").get("w", {}).get("pid"), message="s1's worker pid")

    second = cli("up", "-d", "-c", str(config), state_dir=s2)
    assert second.returncode == 0, second.stderr
    assert "stale" not in second.stderr
    other = wait_for(lambda: status(s2, "dup").get("w", {}).get("pid"), message="s2's worker pid")

    assert alive(pid), "the second stack's start-up stopped the first stack's worker"
    worker = status(s1, "dup")["w"]
    assert (worker["pid"], worker["restarts"], worker["last_exit"]) == (pid, 0, None)
    assert stop_rows(s1, "dup") == []
    assert alive(other) and other != pid
    # Each worker carries its own state directory's namespace.
    assert parse_marker(read_marker(pid) or "").namespace == namespace_of(s1)  # type: ignore[union-attr]
    assert parse_marker(read_marker(other) or "").namespace == namespace_of(s2)  # type: ignore[union-attr]


def tree(pid: int) -> set[int]:
    return {pid, *(p.pid for p in psutil.Process(pid).children(recursive=True))}


def _run(spawn, state_dir: Path, name: str, *extra: str):
    """``procguard run --name NAME -- sleep`` in ``state_dir``; returns (runner, its command's pid)."""
    env = python_env(PROCGUARD_STATE_DIR=str(state_dir))
    runner = spawn([*PROCGUARD, "run", "--name", name, "--health-port", "0", "--grace", "2s", *extra,
                    "--", *SLEEP], env=env)

    def command_pid() -> int | None:
        for record in list_instances(state_dir):
            if record.name == name and record.held and record.pid == runner.pid:
                children = [int(p) for p in Path(f"/proc/{runner.pid}/task/{runner.pid}/children")
                            .read_text().split()]
                for child in children:
                    if read_marker(child) == record.marker:
                        return child
        if runner.poll() is not None:
            raise AssertionError(f"runner exited {runner.returncode}: {runner.stderr.read().decode()}")
        return None

    return runner, wait_for(command_pid, message=f"{name} running in {state_dir}")


def test_cleanup_replace_and_ps_stay_in_their_state_directory(tmp_path: Path, spawn) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    runner_a, child_a = _run(spawn, a, "same")
    runner_b, child_b = _run(spawn, b, "same")
    # A process of an older procguard: its marker names no state directory.
    old = spawn(SLEEP, env=python_env(**{MARKER_ENV: "same:0123456789ab"}))
    wait_for(lambda: read_marker(old.pid) is not None, message="old-format marker readable")

    ps_a = json.loads(cli("ps", "--json", "--state-dir", str(a)).stdout)
    assert [(r["name"], r["pid"]) for r in ps_a] == [("same", runner_a.pid)]

    dry = cli("cleanup", "same", "--dry-run", "--json", state_dir=b)
    assert dry.returncode == 0, dry.stderr
    report = json.loads(dry.stdout)
    b_tree = tree(runner_b.pid)  # the runner, its command and its watchdog
    assert child_b in b_tree and len(b_tree) == 3
    assert {p["pid"] for p in report["processes"]} == b_tree
    spared = {s["pid"]: s["reason"] for s in report["spared"]}
    assert "another state directory" in spared[child_a]
    assert "names no state directory" in spared[old.pid]

    # --replace in a: a's instance is replaced, b's is untouched.
    runner_a2, child_a2 = _run(spawn, a, "same", "--replace")
    assert runner_a.wait(timeout=30) == 143
    assert alive(runner_b.pid) and alive(child_b) and not alive(child_a) and alive(child_a2)

    # cleanup all in b: every instance of b, nothing of a, not the old process.
    done = cli("cleanup", "all", "--grace", "5", "--json", "--state-dir", str(b))
    assert done.returncode == 0, done.stderr
    assert {p["pid"] for p in json.loads(done.stdout)["processes"]} == b_tree
    assert runner_b.wait(timeout=30) in (0, 143)
    assert alive(runner_a2.pid) and alive(child_a2) and old.poll() is None
    assert [r["name"] for r in json.loads(cli("ps", "--json", "--state-dir", str(b)).stdout)] == []


def _twin_stack(directory: Path) -> Path:
    """Project "twin": a function worker, a command with a health port, a library worker, a plain command."""
    directory.mkdir()
    return write_config(directory, {
        "fn": {"run": "tests.supervisor_workers.targets:idle", "interval": "1h"},
        "web": {"command": SLEEP, "health_port": free_port()},
        "lib": {"command": worker_cmd("libworker.py", "twin-lib")},
        "plain": {"command": SLEEP},
    }, project="twin", defaults={"grace": "5s"})


def test_up_state_dir_reaches_every_process_it_starts(tmp_path: Path, spawn) -> None:
    """Only --state-dir names the stacks' directories: runners and in-process managers must follow it."""
    env = python_env(PROCGUARD_LOG_LEVEL="INFO")
    env.pop("PROCGUARD_STATE_DIR", None)
    sides = []
    for side in ("one", "two"):
        config, state_dir = _twin_stack(tmp_path / side), tmp_path / side / "state"
        out = (tmp_path / f"{side}.out").open("wb")
        spawn([*PROCGUARD, "up", "-c", str(config), "--state-dir", str(state_dir), "--status-port", "0"],
              env=env, stdout=out, stderr=subprocess.STDOUT)
        out.close()
        sides.append((state_dir, tmp_path / f"{side}.out"))

    def settled(state_dir: Path) -> dict[str, dict[str, Any]] | None:
        """Every worker running, and every lock the stack's processes take held in state_dir by them."""
        workers = status(state_dir, "twin")
        if len(workers) != 4 or any(w["state"] != "running" for w in workers.values()):
            return None
        held = {r.name: r.pid for r in list_instances(state_dir) if r.held}
        # A command (health port or not) runs directly, with no lock of its own: the stack's covers it.
        wanted = {"twin.fn": workers["fn"]["pid"], "twin-lib": workers["lib"]["pid"]}
        return workers if all(held.get(name) == pid for name, pid in wanted.items()) else None

    for state_dir, out in sides:
        workers = wait_for(lambda state_dir=state_dir: settled(state_dir), timeout=60,
                           message=lambda state_dir=state_dir, out=out: (
                               f"stack in {state_dir} settled: {status(state_dir, 'twin')}, "
                               f"locks {[(r.name, r.held, r.pid) for r in list_instances(state_dir)]}\n"
                               f"{out.read_text(errors='replace')[-3000:]}"))
        assert all(w["restarts"] == 0 for w in workers.values()), workers
        namespace = namespace_of(state_dir)
        for name, worker in workers.items():
            marker = parse_marker(read_marker(worker["pid"]) or "")
            assert marker is not None and marker.namespace == namespace, (name, marker)
            env_of = Path(f"/proc/{worker['pid']}/environ").read_bytes().split(b"\0")
            assert f"PROCGUARD_STATE_DIR={state_dir}".encode() in env_of
    # Nothing was left in the default state directory by either stack.
    assert not [r.name for r in list_instances(None) if r.held and r.name.startswith("twin")]
    for state_dir, _out in sides:
        assert stop_rows(state_dir, "twin") == []
        done = cli("down", "--project", "twin", "--state-dir", str(state_dir))
        assert done.returncode == 0, done.stderr


def test_run_state_dir_flag_reaches_a_function_worker(tmp_path: Path) -> None:
    """``procguard run --state-dir DIR module:function`` locks in DIR only; its children carry DIR's marker."""
    default = tmp_path / "runtime"  # where the default state directory would be: private to this test
    default.mkdir(mode=0o700)
    state_dir, out = tmp_path / "mine", tmp_path / "marker"
    env = python_env(PROCGUARD_LOG_LEVEL="WARNING", XDG_RUNTIME_DIR=str(default), MARKER_OUT=str(out))
    env.pop("PROCGUARD_STATE_DIR", None)
    result = subprocess.run([*PROCGUARD, "run", "tests.supervisor_workers.targets:write_marker", "--name", "flagged",
                             "--once", "--health-port", "0", "--state-dir", str(state_dir)],
                            env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    marker = parse_marker(out.read_text())
    assert marker is not None and marker.namespace == namespace_of(state_dir), out.read_text()
    assert [r.name for r in list_instances(state_dir)] == ["flagged"]
    assert not (default / "procguard").exists()


def test_a_managers_claim_trusts_only_a_parent_of_its_own_state_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ProcessManager under a procguard parent skips its lock only when the parent locked here."""
    from procguard.instances.claim import InstanceClaim
    from procguard.instances.marker import new_marker

    state_dir = tmp_path / "state"
    monkeypatch.setenv(MARKER_ENV, new_marker("worker", namespace_of(state_dir)))
    assert InstanceClaim.take("worker", pid=os.getpid(), state_dir=state_dir) is None
    monkeypatch.setenv(MARKER_ENV, new_marker("worker", namespace_of(tmp_path / "elsewhere")))
    claim = InstanceClaim.take("worker", pid=os.getpid(), state_dir=state_dir)
    try:
        assert claim is not None and claim.lock.held
        assert parse_marker(os.environ[MARKER_ENV]).namespace == namespace_of(state_dir)  # type: ignore[union-attr]
    finally:
        if claim is not None:
            claim.withdraw_marker()
            claim.lock.release()
