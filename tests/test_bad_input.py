"""Bad input is one line and exit status 2, whatever command it reaches.

One table, each row a real command run as a subprocess against real files,
devices, pipes and taken ports: the exit status is 2, stderr is exactly one
line, no traceback, and the bad value is named (cut, with its length, when it
is long). ``procguard run``'s own flags have their table in
test_run_bad_input.py; this one covers the config, deploy, up and a worker's
own command line (the README's seed command).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .helpers import PROCGUARD, REPO_ROOT, python_env

#: Longest acceptable line for a value of 10,000 characters: the message, the
#: file name and the value's shown part (twice at most), not the value itself.
LONG_LINE_MAX = 700

LONG_NAME = "a" * 10_000
#: How many characters of a value a message shows (procguard.errors.SHOWN_MAX).
SHOWN_MAX = 80
#: How a message shows it: its first SHOWN_MAX characters, an ellipsis, its length.
LONG_SHOWN = "'" + "a" * SHOWN_MAX + "…' (10000 characters)"


@dataclass
class Ctx:
    """What a row's command may refer to: a temp directory and a port someone else holds."""

    tmp: Path
    taken_port: int

    def config(self, text: str, name: str = "procguard.toml") -> str:
        path = self.tmp / name
        path.write_text(text)
        return str(path)


def _toml(value: str) -> str:
    return json.dumps(value)  # a JSON string literal is a TOML basic string


def _worker(name: str = "w", extra: str = "") -> str:
    return f'[workers.{_toml(name)}]\ncommand = "sleep 300"\n{extra}'


@dataclass(frozen=True)
class Row:
    id: str
    argv: Callable[[Ctx], list[str]]
    named: Callable[[Ctx], str]  # what the one line must contain
    absent: tuple[str, ...] = ()  # what it must not
    long: bool = False  # the value is 10,000 characters: the line stays short


def _existing_file(ctx: Ctx) -> str:
    path = ctx.tmp / "existing"
    path.write_text("not a directory\n")
    return str(path)


def _fifo(ctx: Ctx) -> str:
    path = ctx.tmp / "pipe.toml"
    os.mkfifo(path)
    return str(path)


def _big(ctx: Ctx) -> str:
    path = ctx.tmp / "big.toml"
    path.write_text(_worker() + "#" * (1 << 20) + "\n")
    return str(path)


def _seed_command(ctx: Ctx) -> list[str]:
    """The README's seed command, with the health port someone else holds."""
    return [
        sys.executable, "-m", "examples.analyticbot.collector", "--interval", "10", "--max-runtime", "24",
        "--memory-limit", "2048", "--cpu-limit", "80", "--health-port", str(ctx.taken_port),
        "--user-id", "123", "--once", "--data-dir", str(ctx.tmp / "data"),
    ]  # fmt: skip


def _deploy(target: str = "systemd") -> Callable[[Ctx], list[str]]:
    return lambda ctx: [*PROCGUARD, "deploy", target, "-c", ctx.config(_worker())]


ROWS = [
    Row(
        "deploy -o an existing file",
        lambda ctx: [*_deploy()(ctx), "-o", _existing_file(ctx)],
        lambda ctx: f"-o {ctx.tmp / 'existing'}: it exists and is not a directory",
    ),
    Row(
        "deploy -o under /proc",
        lambda ctx: [*_deploy("supervisor")(ctx), "-o", "/proc/x"],
        lambda ctx: "-o /proc/x: cannot create it",
    ),
    Row(
        "check -c /dev/zero",
        lambda ctx: [*PROCGUARD, "check", "-c", "/dev/zero"],
        lambda ctx: "/dev/zero: is a character device, not a regular file",
    ),
    Row(
        "check -c a named pipe",
        lambda ctx: [*PROCGUARD, "check", "-c", _fifo(ctx)],
        lambda ctx: "pipe.toml: is a named pipe, not a regular file",
    ),
    Row(
        "check -c a directory",
        lambda ctx: [*PROCGUARD, "check", "-c", str(ctx.tmp)],
        lambda ctx: f"{ctx.tmp}: is a directory",
    ),
    Row(
        "check -c a file over 1 MiB",
        lambda ctx: [*PROCGUARD, "check", "-c", _big(ctx)],
        lambda ctx: "big.toml: is larger than 1 MiB",
    ),
    Row(
        "check -c a missing file with a newline in its name",
        lambda ctx: [*PROCGUARD, "check", "-c", str(ctx.tmp / "a\nb.toml")],
        lambda ctx: "a\\nb.toml: no such file",
    ),
    Row(
        "a worker name with a newline",
        lambda ctx: [*PROCGUARD, "check", "-c", ctx.config(_worker("a\nb"))],
        lambda ctx: "workers.a\\nb: 'a\\nb' is not a valid worker name",
    ),
    Row(
        "a worker named all (the word that selects every worker)",
        lambda ctx: [*PROCGUARD, "check", "-c", ctx.config(_worker("all"))],
        lambda ctx: "workers.all: 'all' is reserved ('all' selects every worker in procguard start/stop/restart/signal/logs; use another name)",
    ),
    Row(
        "an env key with a newline",
        lambda ctx: [*PROCGUARD, "check", "-c", ctx.config(_worker(extra='env = { "A\\nB" = "1" }\n'))],
        lambda ctx: "workers.w.env.A\\nB: is not a valid variable name",
    ),
    Row(
        "an env key with a terminal escape, deploy",
        lambda ctx: [*PROCGUARD, "deploy", "systemd", "-c", ctx.config(_worker(extra='env = { "A\\u001b[2J" = "1" }\n'))],
        lambda ctx: "workers.w.env.A\\x1b[2J: is not a valid variable name",
    ),
    Row(
        "a 10,000-character worker name",
        lambda ctx: [*PROCGUARD, "check", "-c", ctx.config(_worker(LONG_NAME))],
        lambda ctx: f"workers.{'a' * (SHOWN_MAX - 8)}… (10008 characters): {LONG_SHOWN} is not a valid worker name",
        long=True,
    ),
    Row(
        "a 10,000-character env key, deploy",
        lambda ctx: [*PROCGUARD, "deploy", "kubernetes", "-c", ctx.config(_worker(extra=f"env = {{ {_toml('-' + LONG_NAME)} = '1' }}\n"))],
        lambda ctx: f"workers.w.env.-{'a' * (SHOWN_MAX - 15)}… (10015 characters): is not a valid variable name",
        long=True,
    ),
    Row(
        "a 10,000-character memory limit",
        lambda ctx: [*PROCGUARD, "check", "-c", ctx.config(_worker(extra=f"memory_limit = {_toml(LONG_NAME)}\n"))],
        lambda ctx: f"workers.w.memory_limit: {LONG_SHOWN} is not a size",
        long=True,
    ),
    Row(
        "up --status-port with 10,000 characters",
        lambda ctx: [*PROCGUARD, "up", "-c", ctx.config(_worker()), "--status-port", LONG_NAME],
        lambda ctx: f"--status-port: {LONG_SHOWN} is not a port",
        long=True,
    ),
    Row(
        "the README's seed command with its health port taken",
        _seed_command,
        lambda ctx: f"analyticbot-collector: health port {ctx.taken_port} on 127.0.0.1 is already in use",
        absent=("0 for any",),
    ),
    Row(
        "procguard run --health-port taken",
        lambda ctx: [*PROCGUARD, "run", "--health-port", str(ctx.taken_port), "--", "true"],
        lambda ctx: f"health port {ctx.taken_port} on 127.0.0.1 is already in use",
        absent=("0 for any",),
    ),
    Row(
        "up with procguard.toml's status_port taken",
        lambda ctx: [*PROCGUARD, "up", "-c", ctx.config(f"[project]\nstatus_port = {ctx.taken_port}\n" + _worker())],
        lambda ctx: f"procguard.toml: project.status_port: cannot listen on 127.0.0.1:{ctx.taken_port}",
        absent=("--status-port",),
    ),
    Row(
        "up --status-port taken",
        lambda ctx: [*PROCGUARD, "up", "-c", ctx.config(_worker()), "--status-port", str(ctx.taken_port)],
        lambda ctx: f"--status-port: cannot listen on 127.0.0.1:{ctx.taken_port}",
        absent=("project.status_port",),
    ),
]


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port on 127.0.0.1 held (listening) by this test for its whole run."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_bad_input_is_one_line_and_exit_2(row: Row, tmp_path: Path, state_dir: Path, taken_port: int) -> None:
    ctx = Ctx(tmp_path, taken_port)
    argv = row.argv(ctx)
    try:
        proc = subprocess.run(
            argv, capture_output=True, env=python_env(), cwd=REPO_ROOT, timeout=30, check=False
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{row.id}: still running after 30 s (bad input must be refused at once)")
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == 2, f"exit {proc.returncode}, stderr:\n{err[:3000]}"
    assert "Traceback" not in err, err[:3000]
    assert err.endswith("\n") and err.count("\n") == 1, f"not one line:\n{err[:3000]}"
    expected = row.named(ctx)
    assert expected in err, f"{expected!r} not named in: {err[:3000]}"
    for text in row.absent:
        assert text not in err, err
    if row.long:
        assert len(err) < LONG_LINE_MAX, f"{len(err)} characters: {err[:3000]}"
    # nothing was written where a row names an output directory
    assert not (tmp_path / "deploy").exists()


# --- the pieces the table relies on ------------------------------------------------


def test_shown_escapes_and_bounds_a_value() -> None:
    from procguard.errors import shown

    assert shown("12XB") == "'12XB'"
    assert shown("a\nb\x1b[2J\u2028") == "'a\\nb\\x1b[2J\\u2028'"
    assert shown("a\nb", quote=False) == "a\\nb"
    assert shown(LONG_NAME) == LONG_SHOWN
    assert shown(LONG_NAME, quote=False) == "a" * SHOWN_MAX + "… (10000 characters)"
    assert shown(["x" * 200]).endswith("… (204 characters)")
    assert shown(70000) == "70000"


def test_every_procguard_error_prints_as_one_line() -> None:
    from procguard.errors import ConfigError, StateDirError, UsageError

    assert str(UsageError("line one\nline two")) == "line one\\nline two"
    assert str(ConfigError("is bad", path="a\nb.toml", key="workers.x\ny")) == "a\\nb.toml: workers.x\\ny: is bad"
    assert "\n" not in str(StateDirError("/tmp/a\nb", "is a symbolic link"))


def test_exit_status_of_turns_a_procguard_error_into_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from procguard import UsageError, exit_status_of
    from procguard.errors import AlreadyRunningError

    def taken() -> int:
        raise UsageError("health port 9 on 127.0.0.1 is already in use\nsecond line")

    def running() -> int:
        raise AlreadyRunningError("collector", 4242)

    assert exit_status_of(taken, prog="worker") == 2
    assert capsys.readouterr().err == "worker: health port 9 on 127.0.0.1 is already in use\\nsecond line\n"
    assert exit_status_of(running, prog="worker") == 3
    assert capsys.readouterr().err == "worker: instance 'collector' is already running as PID 4242\n"
    assert exit_status_of(lambda: None) == 0
    assert exit_status_of(lambda: 85) == 85
    with pytest.raises(ZeroDivisionError):  # the program's own bug keeps its traceback
        exit_status_of(lambda: 1 // 0)
