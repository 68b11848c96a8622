"""Test kit for the supervisor tests: write a procguard.toml, run ``procguard up``,
ask the running supervisor for its status, wait for worker states."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from procguard.procstat import read_stat
from procguard.supervisor.control import NotRunningError, request, socket_path

from ..helpers import PROCGUARD, python_env, read_output, wait_for

WORKERS_DIR = Path(__file__).resolve().parent


def worker_cmd(script: str, *args: object) -> list[str]:
    """argv of one of the test workers in this directory."""
    return [sys.executable, str(WORKERS_DIR / script), *(str(a) for a in args)]


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    return json.dumps(str(value))


def write_config(
    directory: Path,
    workers: dict[str, dict[str, Any]],
    *,
    project: str = "teststack",
    defaults: dict[str, Any] | None = None,
    **project_keys: Any,
) -> Path:
    lines = ["[project]", f"name = {_toml(project)}"]
    lines += [f"{k} = {_toml(v)}" for k, v in project_keys.items()]
    if defaults:
        lines += ["", "[defaults]"] + [f"{k} = {_toml(v)}" for k, v in defaults.items()]
    for name, keys in workers.items():
        lines += ["", f"[workers.{name}]"] + [f"{k} = {_toml(v)}" for k, v in keys.items()]
    path = directory / "procguard.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


class Stack:
    """One stack under test: its config, state dir and the supervisor process."""

    def __init__(self, config: Path, state_dir: Path, spawn: Callable[..., subprocess.Popen[bytes]],
                 *, project: str = "teststack", tuning: str = "") -> None:
        self.config = config
        self.state_dir = state_dir
        self.spawn = spawn
        self.project = project
        self.proc: subprocess.Popen[bytes] | None = None
        self.env = python_env(PROCGUARD_STATE_DIR=str(state_dir), PROCGUARD_LOG_LEVEL="DEBUG")
        if tuning:
            self.env["PROCGUARD_SUPERVISOR_TUNING"] = tuning
        self.out_path = config.parent / "up.out"

    def up(self, *args: str) -> subprocess.Popen[bytes]:
        """``procguard up`` in the foreground (output to a file, never a pipe that could fill)."""
        out = open(self.out_path, "ab")  # noqa: SIM115 - closed by the test's end
        self.proc = self.spawn([*PROCGUARD, "up", "-c", str(self.config), *args],
                               env=self.env, stdout=out, stderr=subprocess.STDOUT)
        out.close()
        return self.proc

    def output(self) -> str:
        return self.out_path.read_text(errors="replace") if self.out_path.exists() else ""

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        env = {**self.env, "PROCGUARD_LOG_LEVEL": "WARNING"}
        return subprocess.run([*PROCGUARD, *args, "-c", str(self.config)], env=env,
                              capture_output=True, text=True, timeout=timeout, check=False)

    def status(self) -> list[dict[str, Any]] | None:
        """The workers' status objects, or None while no supervisor answers."""
        try:
            reply = request(socket_path(self.state_dir, self.project), {"cmd": "status"},
                            project=self.project, timeout=10)
        except (NotRunningError, OSError):
            return None
        return list(reply["workers"])

    def worker(self, name: str) -> dict[str, Any] | None:
        for worker in self.status() or []:
            if worker["name"] == name:
                return worker
        return None

    def _describe(self) -> str:
        died = ""
        if self.proc is not None and self.proc.poll() is not None:
            died = f"supervisor exited {self.proc.returncode}; "
        return f"{died}status={self.status()}\noutput:\n{self.output()[-3000:]}"

    def wait_worker(self, name: str, predicate: Callable[[dict[str, Any]], bool], *,
                    what: str, timeout: float = 20) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"supervisor died while waiting for {name} {what}: {self._describe()}")
            worker = self.worker(name)
            return worker if worker is not None and predicate(worker) else None

        return wait_for(check, timeout=timeout, interval=0.05,
                        message=lambda: f"{name} {what}; {self._describe()}")

    def wait_state(self, name: str, *states: str, timeout: float = 20) -> dict[str, Any]:
        return self.wait_worker(name, lambda w: w["state"] in states, what=f"in state {states}", timeout=timeout)

    def wait_up(self, timeout: float = 20) -> None:
        wait_for(lambda: self.status() is not None, timeout=timeout,
                 message=lambda: f"supervisor to answer; {self._describe()}")


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def alive(pid: int) -> bool:
    """True if ``pid`` is a live (non-zombie) process."""
    stat = read_stat(pid)
    return stat is not None and not stat.exited


def kill_and_expect_no_survivors(supervisor: subprocess.Popen[bytes], pids: list[int]) -> None:
    """SIGKILL the supervisor (reaped) and wait until none of ``pids`` is alive (its watchdog's job)."""
    supervisor.send_signal(signal.SIGKILL)
    supervisor.wait(timeout=10)
    wait_for(lambda: not any(alive(pid) for pid in pids), timeout=15,
             message=lambda: f"no survivors; alive: {[pid for pid in pids if alive(pid)]}")


__all__ = ["Stack", "alive", "kill_and_expect_no_survivors", "lines", "read_output", "worker_cmd", "write_config"]
