"""TLS on the health ports and the status page, and the token read from a file.

Real certificates (made by ``openssl``), real sockets on 127.0.0.1, real
``procguard run`` and ``procguard up`` processes. What is checked:

- every server that answers a health port (responder process, thread, the
  command runner, the supervisor for a command and a function worker) and
  the status page speak HTTPS with ``health_tls_cert``/``health_tls_key``,
  and answer a plain HTTP request with one fixed 400 "this port speaks
  HTTPS", never with the port's content;
- a bad handshake does not stop the port serving others;
- the bearer token (from ``health_token_file``) is still required on /metrics
  over TLS, in a header only;
- bad files (missing, unreadable, not PEM, a key that does not match, a
  token file that does not exist) are one line and exit 2 from ``run``,
  ``check`` and ``up`` before anything starts.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from procguard.errors import UsageError
from procguard.health.loop import PLAIN_REFUSAL
from procguard.health.server import serve_health
from procguard.health.tls import read_token_file, server_context
from procguard.snapshot import HealthStatus, WorkerSnapshot

from .helpers import PROCGUARD, free_port, python_env, wait_for
from .supervisor_workers.stackkit import Stack, worker_cmd, write_config
from .tlsfiles import TlsFiles, https_get, make_tls_files, plain_exchange

TOKEN = "tls-t0ken"
FAST = "start_period_s=0.3,sample_interval_s=0.2"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


def _snapshot() -> WorkerSnapshot:
    return WorkerSnapshot(name="w", pid=os.getpid(), health=HealthStatus(True), ready=HealthStatus(True),
                          uptime_seconds=3.0, heartbeat_age_seconds=0.1)


def _assert_refused_in_clear(port: int) -> None:
    answer = plain_exchange(port)
    assert answer == PLAIN_REFUSAL
    assert answer.startswith(b"HTTP/1.1 400 ") and b"this port speaks HTTPS" in answer
    assert b"healthy" not in answer and b"procguard_" not in answer


@pytest.mark.parametrize("mode", ["process", "thread"])
def test_a_health_server_speaks_https_only(tls: TlsFiles, mode: str) -> None:
    with serve_health(_snapshot, port=0, mode=mode, token=TOKEN, tls_cert=str(tls.cert),
                      tls_key=str(tls.key)) as server:
        assert server.url.startswith("https://127.0.0.1:")
        status, body = https_get(server.port, "/health", tls.cert)
        assert status == 200 and json.loads(body)["status"] == "ok"
        assert https_get(server.port, "/metrics", tls.cert)[0] == 401  # the token stays required
        status, body = https_get(server.port, "/metrics?format=prometheus", tls.cert,
                                 headers={"Authorization": f"Bearer {TOKEN}"})
        assert status == 200 and b"procguard_healthy" in body
        _assert_refused_in_clear(server.port)
        # a client that starts a handshake and sends garbage, or hangs up mid-handshake, is dropped ...
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(b"\x16\x03\x01\x00\x05garbage-not-a-client-hello")
            try:
                answer = sock.recv(65536)
            except ConnectionResetError:  # dropped at once: nothing was served
                answer = b""
            assert b"healthy" not in answer and b"HTTP/" not in answer
        # ... and an untrusting client's handshake fails without harming the port
        with pytest.raises(ssl.SSLCertVerificationError):
            https_get(server.port, "/health", _unrelated_ca(tls))
        assert https_get(server.port, "/ready", tls.cert)[0] == 200


def _unrelated_ca(tls: TlsFiles) -> Path:
    """A CA file that does not vouch for the server's certificate."""
    other = make_tls_files(tls.cert.parent / "unrelated")
    return other.cert


def test_bad_tls_files_are_one_line(tls: TlsFiles, tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(UsageError, match=r"health_tls_cert: .*missing\.pem.* does not exist"):
        server_context(str(missing), str(tls.key))
    with pytest.raises(UsageError, match=r"health_tls_key: .*other-key\.pem.* does not match the certificate"):
        server_context(str(tls.cert), str(tls.other_key))
    with pytest.raises(UsageError, match=r"health_tls_cert: .* is not a PEM certificate"):
        server_context(str(tls.key), str(tls.key))
    with pytest.raises(UsageError, match=r"is a directory"):
        server_context(str(tmp_path), str(tls.key))
    unreadable = tmp_path / "unreadable.pem"
    unreadable.write_bytes(tls.key.read_bytes())
    unreadable.chmod(0)
    if os.geteuid() != 0:
        with pytest.raises(UsageError, match=r"health_tls_key: .* cannot be read \(permission denied\)"):
            server_context(str(tls.cert), str(unreadable))
    empty = tmp_path / "empty.token"
    empty.write_text("\n")
    with pytest.raises(UsageError, match=r"health_token_file: .* is empty"):
        read_token_file(str(empty))
    with pytest.raises(UsageError, match=r"health_token_file: .* does not exist"):
        read_token_file(str(missing))


def _cli(*args: str, state: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PROCGUARD, *args], capture_output=True, text=True, timeout=timeout, check=False,
                          env=python_env(PROCGUARD_STATE_DIR=str(state)))


def _one_line_exit_2(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_run_refuses_bad_files_before_the_command_starts(tls: TlsFiles, tmp_path: Path) -> None:
    marker = tmp_path / "started"
    command = ["--", "sh", "-c", f"touch {marker}"]
    port = str(free_port())
    state = tmp_path / "state"
    cases = [
        (["--health-tls-cert", str(tmp_path / "nope.pem"), "--health-tls-key", str(tls.key)],
         ("health_tls_cert", "nope.pem", "does not exist")),
        (["--health-tls-cert", str(tls.cert), "--health-tls-key", str(tls.other_key)],
         ("health_tls_key", "does not match the certificate")),
        (["--health-tls-cert", str(tls.cert)], ("health_tls_cert is set without health_tls_key",)),
        (["--health-token-file", str(tmp_path / "no.token")], ("health_token_file", "no.token", "does not exist")),
    ]
    for flags, needles in cases:
        result = _cli("run", "--name", "badtls", "--health-port", port, *flags, *command, state=state)
        _one_line_exit_2(result, *needles)
        assert not marker.exists(), "the command started although its files were bad"
    # the same for a function worker (ProcessManager.start checks them before the first iteration)
    result = _cli("run", "tests.supervisor_workers.targets:idle", "--name", "badfn", "--health-port", port,
                  "--health-tls-cert", str(tls.cert), "--health-tls-key", str(tls.other_key), "--once",
                  state=state)
    _one_line_exit_2(result, "health_tls_key", "does not match")


def test_a_command_runner_serves_https(tls: TlsFiles, tmp_path: Path, spawn: Any) -> None:
    port = free_port()
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    proc = spawn([*PROCGUARD, "run", "--name", "tlsrun", "--health-port", str(port),
                  "--health-tls-cert", str(tls.cert), "--health-tls-key", str(tls.key),
                  "--health-token-file", str(token_file), "--", "sleep", "60"],
                 env=python_env(PROCGUARD_STATE_DIR=str(tmp_path / "state")))

    def healthy() -> bool:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        try:
            return https_get(port, "/health", tls.cert)[0] == 200
        except OSError:
            return False

    wait_for(healthy, message="the runner's HTTPS health port")
    assert https_get(port, "/metrics", tls.cert)[0] == 401
    assert https_get(port, "/metrics", tls.cert, headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200
    # the token is never taken from the query string
    assert https_get(port, f"/metrics?token={TOKEN}&access_token={TOKEN}", tls.cert)[0] == 401
    _assert_refused_in_clear(port)


@pytest.fixture
def tls_stack(tls: TlsFiles, tmp_path: Path, spawn: Any) -> Iterator[tuple[Stack, dict[str, int]]]:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    ports = {"web": free_port(), "fn": free_port(), "status": free_port()}
    tls_keys = {"health_tls_cert": str(tls.cert), "health_tls_key": str(tls.key),
                "health_token_file": str(token_file)}
    config = write_config(tmp_path, {
        "web": {"command": worker_cmd("ticker.py", tmp_path / "web"), "health_port": ports["web"], **tls_keys},
        "fn": {"run": "tests.supervisor_workers.targets:idle", "interval": "1s", "health_port": ports["fn"],
               **tls_keys},
    }, project=f"tls{os.getpid()}", defaults={"grace": "5s"}, status_port=ports["status"],
        status_tls_cert=str(tls.cert), status_tls_key=str(tls.key))
    stack = Stack(config, tmp_path / "state", spawn, project=f"tls{os.getpid()}", tuning=FAST)
    stack.up()
    for name in ("web", "fn"):
        stack.wait_state(name, "running")
    yield stack, ports


def test_up_serves_health_ports_and_the_status_page_over_https(
    tls_stack: tuple[Stack, dict[str, int]], tls: TlsFiles
) -> None:
    stack, ports = tls_stack
    for name in ("web", "fn"):
        port = ports[name]
        status = wait_for(lambda p=port: https_get(p, "/health", tls.cert)[0] == 200,  # type: ignore[misc]
                          message=f"{name} healthy over HTTPS")
        assert status
        assert https_get(port, "/metrics", tls.cert)[0] == 401
        status_code, body = https_get(port, "/metrics?format=prometheus", tls.cert,
                                      headers={"Authorization": f"Bearer {TOKEN}"})
        assert status_code == 200 and f'worker="{name}"'.encode() in body
        _assert_refused_in_clear(port)
    status_code, body = https_get(ports["status"], "/api/workers", tls.cert)
    assert status_code == 200 and {w["name"] for w in json.loads(body)} == {"web", "fn"}
    _assert_refused_in_clear(ports["status"])
    assert "https://127.0.0.1:" in stack.output()


def test_check_and_up_refuse_bad_files_before_anything_starts(tls: TlsFiles, tmp_path: Path) -> None:
    marker = tmp_path / "started"
    state = tmp_path / "state"
    base = {"command": ["sh", "-c", f"touch {marker}; sleep 30"], "health_port": free_port()}
    cases: list[tuple[dict[str, Any], dict[str, Any], tuple[str, ...]]] = [
        ({"health_tls_cert": str(tls.cert), "health_tls_key": str(tls.other_key)}, {},
         ("workers.w.health_tls_key", "does not match the certificate")),
        ({"health_tls_cert": str(tmp_path / "gone.pem"), "health_tls_key": str(tls.key)}, {},
         ("workers.w.health_tls_cert", "gone.pem", "does not exist")),
        ({"health_token_file": "relative.token"}, {}, ("workers.w.health_token_file", "relative.token",
                                                       "does not exist")),
        ({}, {"status_port": free_port(), "status_tls_cert": str(tls.cert), "status_tls_key": str(tls.other_key)},
         ("project.status_tls_key", "does not match")),
    ]
    for keys, project_keys, needles in cases:
        config = write_config(tmp_path, {"w": {**base, **keys}}, project="badtls", **project_keys)
        _one_line_exit_2(_cli("check", "-c", str(config), state=state), *needles)
        _one_line_exit_2(_cli("up", "-c", str(config), state=state), *needles)
        assert not marker.exists()
    # a relative path is relative to the config file's directory: once the file exists, check passes
    (tmp_path / "relative.token").write_text(TOKEN)
    config = write_config(tmp_path, {"w": {**base, "health_token_file": "relative.token"}}, project="badtls")
    assert _cli("check", "-q", "-c", str(config), state=state).returncode == 0
    # cert without key is refused when the config is read
    config = write_config(tmp_path, {"w": {**base, "health_tls_cert": str(tls.cert)}}, project="badtls")
    _one_line_exit_2(_cli("check", "-c", str(config), state=state), "health_tls_cert is set without health_tls_key")
