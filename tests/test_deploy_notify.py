"""A function worker started exactly as its generated unit says speaks sd_notify.

``Type=notify`` + ``WatchdogSec`` only work if the process systemd starts
(the unit's ExecStart) sends ``READY=1`` and keeps sending ``WATCHDOG=1``
while its loop beats. Here the ExecStart line of a rendered unit is split by
systemd's rules and run with ``NOTIFY_SOCKET`` pointing at a datagram socket
the test binds, as systemd would; SIGTERM ends it with a status listed in
``SuccessExitStatus``.
"""

from __future__ import annotations

import signal
import socket
import sys
from pathlib import Path

from procguard.config import parse_config
from procguard.deploy import all_settings, render

from .conftest import Spawn
from .helpers import REPO_ROOT, python_env, read_output, wait_for
from .test_deploy_escape import _systemd_words


def tick() -> None:
    """The function worker: one cheap iteration (runs in the child process)."""


def test_function_worker_unit_sends_ready_and_watchdog(tmp_path: Path, spawn: Spawn, state_dir: Path) -> None:
    config = parse_config(
        "[workers.ticker]\nrun = 'tests.test_deploy_notify:tick'\ninterval = '0.2s'\n"
        "heartbeat_timeout = '10s'\ngrace = '5s'\n",
        path=tmp_path / "procguard.toml",
    )
    (unit,) = [f for f in render("systemd", config, all_settings(config), workdir=str(REPO_ROOT)) if f.filename.endswith(".service")]
    lines = unit.text.splitlines()
    assert "Type=notify" in lines and "WatchdogSec=10" in lines
    exec_start = next(line for line in lines if line.startswith("ExecStart=")).removeprefix("ExecStart=")
    argv = _systemd_words(exec_start, dollar=True)
    assert argv[0] == sys.executable
    success = {int(s) for s in next(line for line in lines if line.startswith("SuccessExitStatus=")).split("=")[1].split()}

    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(0.2)
    messages: list[str] = []

    def received(text: str) -> bool:
        try:
            while True:
                messages.extend(sock.recv(4096).decode().splitlines())
        except (TimeoutError, BlockingIOError):
            pass
        return text in messages

    try:
        env = python_env(NOTIFY_SOCKET=str(sock_path), WATCHDOG_USEC="2000000")
        proc = spawn(argv, env=env, cwd=str(REPO_ROOT))
        wait_for(lambda: received("READY=1") or proc.poll() is not None, message=lambda: f"READY=1, got {messages}")
        assert proc.poll() is None, read_output(proc)
        wait_for(lambda: received("WATCHDOG=1"), message=lambda: f"WATCHDOG=1, got {messages}")
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(timeout=30)
        received("STOPPING=1")
        assert "STOPPING=1" in messages
        assert status in success, (status, read_output(proc))
    finally:
        sock.close()
