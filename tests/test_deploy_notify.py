"""Workers started exactly as their generated units say speak sd_notify.

``Type=notify`` + ``WatchdogSec`` only work if the process systemd starts
(the unit's ExecStart) sends ``READY=1`` and keeps sending ``WATCHDOG=1``.
Here the ExecStart line of a rendered unit is split by systemd's rules and
run with ``NOTIFY_SOCKET`` pointing at a datagram socket the test binds, as
systemd would; SIGTERM ends it with a status listed in ``SuccessExitStatus``.
A function worker's ProcessManager notifies from inside; a command worker's
runner notifies for a program that knows nothing of systemd.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from procguard.config import parse_config
from procguard.deploy import all_settings, render

from .conftest import Spawn
from .helpers import REPO_ROOT, python_env, read_output, wait_for, wait_for_file
from .test_deploy_escape import _systemd_words


def tick() -> None:
    """The function worker: one cheap iteration (runs in the child process)."""


class NotifySocket:
    """A bound unix datagram socket standing in for systemd's ``NOTIFY_SOCKET``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[str] = []

    def received(self, text: str) -> bool:
        """Read what has arrived; True once ``text`` is among the lines received so far."""
        try:
            while True:
                self.messages.extend(self.sock.recv(4096).decode().splitlines())
        except (TimeoutError, BlockingIOError):
            pass
        return text in self.messages

    def wait(self, text: str, proc: subprocess.Popen[bytes]) -> None:
        """Wait for ``text``; fail at once, with the worker's output, if the worker exits first."""
        wait_for(lambda: self.received(text) or proc.poll() is not None,
                 message=lambda: f"{text}, got {self.messages}")
        assert self.received(text), f"worker exited ({proc.returncode}) before {text}:\n{read_output(proc)}"


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify.sock")
    try:
        yield sock
    finally:
        sock.sock.close()


def _unit_lines(toml: str, tmp_path: Path) -> list[str]:
    config = parse_config(toml, path=tmp_path / "procguard.toml")
    files = render("systemd", config, all_settings(config), workdir=str(REPO_ROOT))
    (unit,) = [f for f in files if f.filename.endswith(".service")]
    return unit.text.splitlines()


def _exec_start(lines: list[str]) -> list[str]:
    exec_start = next(line for line in lines if line.startswith("ExecStart=")).removeprefix("ExecStart=")
    argv = _systemd_words(exec_start, dollar=True)
    assert argv[0] == sys.executable
    return argv


def _success(lines: list[str]) -> set[int]:
    return {int(s) for s in next(line for line in lines if line.startswith("SuccessExitStatus=")).split("=")[1].split()}


def test_function_worker_unit_sends_ready_and_watchdog(
    tmp_path: Path, spawn: Spawn, state_dir: Path, notify_socket: NotifySocket
) -> None:
    lines = _unit_lines(
        "[workers.ticker]\nrun = 'tests.test_deploy_notify:tick'\ninterval = '0.2s'\n"
        "heartbeat_timeout = '10s'\ngrace = '5s'\n",
        tmp_path,
    )
    assert "Type=notify" in lines and "WatchdogSec=10" in lines
    argv = _exec_start(lines)
    assert argv[argv.index("--heartbeat-timeout") + 1] == "10s"

    env = python_env(NOTIFY_SOCKET=str(notify_socket.path), WATCHDOG_USEC="2000000")
    proc = spawn(argv, env=env, cwd=str(REPO_ROOT))
    notify_socket.wait("READY=1", proc)
    notify_socket.wait("WATCHDOG=1", proc)
    proc.send_signal(signal.SIGTERM)
    status = proc.wait(timeout=30)
    notify_socket.received("STOPPING=1")
    assert "STOPPING=1" in notify_socket.messages
    assert status in _success(lines), (status, read_output(proc))


def test_command_worker_unit_sends_ready_watchdog_and_stopping(
    tmp_path: Path, spawn: Spawn, state_dir: Path, notify_socket: NotifySocket
) -> None:
    """The runner notifies for the command; the command itself gets no NOTIFY_SOCKET."""
    seen = tmp_path / "child-notify-socket"
    program = (
        "import os, signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
        f"open({str(seen)!r}, 'w').write('NOTIFY_SOCKET=' + os.environ.get('NOTIFY_SOCKET', ''))\n"
        "time.sleep(600)\n"
    )
    lines = _unit_lines(
        f"[workers.plain]\ncommand = [{sys.executable!r}, '-c', {program!r}]\ngrace = '5s'\n",
        tmp_path,
    )
    assert "Type=notify" in lines and "NotifyAccess=main" in lines and "WatchdogSec=60" in lines
    argv = _exec_start(lines)

    env = python_env(NOTIFY_SOCKET=str(notify_socket.path), WATCHDOG_USEC="1000000")
    proc = spawn(argv, env=env, cwd=str(REPO_ROOT))
    notify_socket.wait("READY=1", proc)
    assert wait_for_file(seen, proc=proc) == "NOTIFY_SOCKET="  # the runner's socket, not the command's
    notify_socket.wait("WATCHDOG=1", proc)
    assert not any(m == "STOPPING=1" for m in notify_socket.messages)
    proc.send_signal(signal.SIGTERM)
    notify_socket.wait("STOPPING=1", proc)
    status = proc.wait(timeout=30)
    assert status in _success(lines) or status == 0, (status, read_output(proc))
    notify_socket.received("")  # whatever else arrived before the runner exited
    after_stop = notify_socket.messages[notify_socket.messages.index("STOPPING=1"):]
    assert "WATCHDOG=1" not in after_stop, notify_socket.messages  # a stopping worker is not fed
    status_lines = [m for m in notify_socket.messages if m.startswith("STATUS=")]
    assert status_lines and "running pid" in status_lines[0], notify_socket.messages
