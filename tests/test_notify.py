"""sd_notify against a real unix datagram socket bound by the test."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from procguard.health.notify import SystemdNotifier

from .conftest import Spawn
from .helpers import PYTHON, python_env, read_output


class Receiver:
    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.settimeout(15)

    def next(self) -> str:
        return self.sock.recv(4096).decode()

    def pending(self) -> list[str]:
        out = []
        self.sock.setblocking(False)
        try:
            while True:
                out.append(self.sock.recv(4096).decode())
        except BlockingIOError:
            pass
        finally:
            self.sock.settimeout(15)
        return out


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    r = Receiver(str(tmp_path / "notify.sock"))
    yield r
    r.sock.close()


@pytest.fixture
def abstract_receiver() -> Iterator[Receiver]:
    r = Receiver(f"@procguard-test-{os.getpid()}-{id(object())}")
    yield r
    r.sock.close()


def test_from_env_is_none_outside_systemd() -> None:
    assert SystemdNotifier.from_env({}) is None
    assert SystemdNotifier.from_env({"NOTIFY_SOCKET": ""}) is None
    assert SystemdNotifier.from_env({"NOTIFY_SOCKET": "relative/path"}) is None
    assert SystemdNotifier.from_env() is None  # conftest clears NOTIFY_SOCKET


def test_messages_arrive_in_order(receiver: Receiver) -> None:
    notifier = SystemdNotifier.from_env({"NOTIFY_SOCKET": receiver.address})
    assert notifier is not None
    with notifier:
        assert notifier.ready()
        assert notifier.status("working: 3 iterations")
        assert notifier.stopping("stopping: max_runtime")
    assert [receiver.next() for _ in range(3)] == [
        "READY=1",
        "STATUS=working: 3 iterations",
        "STOPPING=1\nSTATUS=stopping: max_runtime",
    ]
    assert not notifier.ready()  # closed: nothing sent, nothing raised


def test_abstract_socket(abstract_receiver: Receiver) -> None:
    notifier = SystemdNotifier.from_env({"NOTIFY_SOCKET": abstract_receiver.address})
    assert notifier is not None
    assert notifier.ready()
    assert abstract_receiver.next() == "READY=1"
    notifier.close()


def test_status_cannot_inject_other_assignments(receiver: Receiver) -> None:
    notifier = SystemdNotifier(receiver.address)
    notifier.status("bad\nREADY=1\r\nMAINPID=1")
    assert receiver.next() == "STATUS=bad READY=1 MAINPID=1"
    notifier.close()


def test_watchdog_rate_limited_to_half_the_interval(receiver: Receiver) -> None:
    now = [100.0]
    notifier = SystemdNotifier(receiver.address, watchdog_usec=2_000_000, clock=lambda: now[0])
    assert notifier.watchdog_interval_s == 2.0
    assert notifier.watchdog() is True
    now[0] += 0.5
    assert notifier.watchdog() is False
    now[0] += 0.49
    assert notifier.watchdog() is False
    now[0] += 0.02  # 1.01 s after the first: past half the interval
    assert notifier.watchdog() is True
    now[0] += 1.0
    assert notifier.watchdog() is True
    assert receiver.pending() == ["WATCHDOG=1"] * 3
    notifier.close()


def test_watchdog_is_a_no_op_without_watchdog_usec(receiver: Receiver) -> None:
    notifier = SystemdNotifier.from_env({"NOTIFY_SOCKET": receiver.address})
    assert notifier is not None
    assert notifier.watchdog() is False
    notifier.ready()
    assert receiver.pending() == ["READY=1"]
    notifier.close()


def test_watchdog_pid_of_another_process_disables_it(receiver: Receiver) -> None:
    env = {"NOTIFY_SOCKET": receiver.address, "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}
    notifier = SystemdNotifier.from_env(env)
    assert notifier is not None and notifier.watchdog() is False
    notifier.close()
    env["WATCHDOG_PID"] = str(os.getpid())
    notifier = SystemdNotifier.from_env(env)
    assert notifier is not None and notifier.watchdog() is True
    assert receiver.pending() == ["WATCHDOG=1"]
    notifier.close()


def test_send_failure_never_raises(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    notifier = SystemdNotifier(str(tmp_path / "nobody-listens.sock"))
    assert notifier.ready() is False
    assert notifier.stopping() is False
    assert sum("cannot notify systemd" in r.getMessage() for r in caplog.records) == 1  # logged once
    notifier.close()


WORKER = r"""
import signal, sys, time
from procguard import ProcessManager

stall = [False]
signal.signal(signal.SIGUSR1, lambda *_: stall.__setitem__(0, True))
manager = ProcessManager(None, 0, 0, 0, heartbeat_timeout_s=1.5, sample_interval_s=0.05,
                         single_instance=False, grace_s=10)
manager.start()
while manager.should_continue():
    manager.heartbeat()
    while stall[0]:
        time.sleep(0.02)
    manager.sleep(0.01)
manager.shutdown()
sys.exit(manager.exit_status)
"""


def test_managed_worker_notifies_ready_watchdog_only_while_fresh_and_stopping(
    spawn: Spawn, receiver: Receiver
) -> None:
    env = python_env(NOTIFY_SOCKET=receiver.address, WATCHDOG_USEC="200000")  # 0.2 s: a beat every 0.1 s
    proc = spawn([PYTHON, "-c", WORKER], env=env)
    assert receiver.next() == "READY=1", read_output(proc)
    # fresh loop: the watchdog is fed, at most every 0.1 s
    beats = [receiver.next() for _ in range(3)]
    assert beats == ["WATCHDOG=1"] * 3
    proc.send_signal(signal.SIGUSR1)  # the loop stalls: no heartbeat any more
    messages = []
    while True:
        message = receiver.next()
        messages.append(message)
        if "STOPPING=1" in message:
            break
    # the heartbeat timeout stops the worker (STATUS= in the same datagram or just before it)
    lines = [line for m in messages for line in m.split("\n")]
    status = [line for line in lines if line.startswith("STATUS=")]
    assert status and "heartbeat_timeout" in status[0], messages
    first_non_watchdog = next(i for i, m in enumerate(messages) if m != "WATCHDOG=1")
    assert all("WATCHDOG=1" not in m for m in messages[first_non_watchdog:]), messages
    assert first_non_watchdog <= int(1.5 / 0.1) + 2, messages  # rate-limited while still fresh
    assert "WATCHDOG=1" not in receiver.pending()  # none once stale
    proc.kill()
