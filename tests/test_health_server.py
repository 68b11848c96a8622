"""HealthServer over real sockets: endpoints, statuses, token, robustness, both serving modes."""

from __future__ import annotations

import http.client
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace

import psutil
import pytest

from procguard.errors import UsageError
from procguard.health.server import HealthServer, serve_health
from procguard.snapshot import HealthStatus, WorkerSnapshot

from .helpers import wait_for

MODES = ["process", "thread"]


class MutableSource:
    """A snapshot source the test changes while the server runs."""

    def __init__(self) -> None:
        self.snapshot = WorkerSnapshot(
            name="w", pid=os.getpid(), health=HealthStatus(True), ready=HealthStatus(True),
            uptime_seconds=10.0, heartbeat_age_seconds=0.5, iterations=3, memory_bytes=50 * 2**20,
        )
        self.calls = 0

    def __call__(self) -> WorkerSnapshot:
        self.calls += 1
        return self.snapshot

    def set(self, **changes: object) -> None:
        self.snapshot = replace(self.snapshot, **changes)  # type: ignore[arg-type]


def get(port: int, path: str, *, method: str = "GET", headers: dict[str, str] | None = None,
        body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def raw(port: int, data: bytes, *, timeout: float = 10.0) -> bytes:
    """Send bytes as they are, read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


@pytest.fixture(params=MODES)
def served(request: pytest.FixtureRequest) -> Iterator[tuple[HealthServer, MutableSource]]:
    source = MutableSource()
    server = serve_health(source, mode=request.param, token="")
    try:
        yield server, source
    finally:
        server.close()


def settle(server: HealthServer) -> None:
    """Make the latest source state visible (process mode publishes periodically)."""
    server.refresh()


def test_health_ready_metrics_ok(served: tuple[HealthServer, MutableSource]) -> None:
    server, _source = served
    assert server.url == f"http://127.0.0.1:{server.port}"
    status, headers, body = get(server.port, "/health")
    assert (status, json.loads(body)) == (200, {"status": "ok", "reason": "healthy"})
    assert headers["content-type"] == "application/json"
    assert headers["cache-control"] == "no-store"
    status, _, body = get(server.port, "/ready")
    assert (status, json.loads(body)) == (200, {"status": "ready", "reason": "healthy"})
    status, _, body = get(server.port, "/metrics")
    doc = json.loads(body)
    assert status == 200
    assert doc["metrics"]["pid"] == os.getpid()
    assert doc["metrics"]["memory_mb"] == 50.0
    assert doc["health"] == {"is_healthy": True, "reason": "healthy"}
    assert set(doc) == {"metrics", "health", "runtime"}


def test_unhealthy_and_not_ready_are_503_with_reason(served: tuple[HealthServer, MutableSource]) -> None:
    server, source = served
    source.set(health=HealthStatus(False, "heartbeat is 42.0 s old (timeout 30 s)"),
               ready=HealthStatus(False, "draining"))
    settle(server)
    status, _, body = get(server.port, "/health")
    assert (status, json.loads(body)) == (503, {"status": "unhealthy",
                                                "reason": "heartbeat is 42.0 s old (timeout 30 s)"})
    status, _, body = get(server.port, "/ready")
    assert (status, json.loads(body)) == (503, {"status": "not_ready", "reason": "draining"})
    source.set(health=HealthStatus(True), ready=HealthStatus(True))
    settle(server)
    assert get(server.port, "/health")[0] == 200
    assert get(server.port, "/ready")[0] == 200


def test_process_mode_publishes_without_refresh() -> None:
    source = MutableSource()
    with serve_health(source, mode="process", publish_interval_s=0.05) as server:
        assert get(server.port, "/ready")[0] == 200
        source.set(ready=HealthStatus(False, "dependency down"))
        wait_for(lambda: get(server.port, "/ready")[0] == 503, message="/ready to turn 503 by itself")
        assert get(server.port, "/health")[0] == 200  # readiness does not fail liveness


def test_metrics_formats(served: tuple[HealthServer, MutableSource]) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    server, _ = served
    status, headers, body = get(server.port, "/metrics?format=prometheus")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    names = {s.name for f in text_string_to_metric_families(body.decode()) for s in f.samples}
    assert {"procguard_uptime_seconds", "procguard_iterations_total", "procguard_healthy"} <= names
    status, headers, body = get(server.port, "/metrics", headers={"Accept": "text/plain;version=0.0.4"})
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    status, headers, body = get(server.port, "/metrics", headers={
        "Accept": "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"})
    assert headers["content-type"].startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")
    status, headers, body = get(server.port, "/metrics", headers={"Accept": "*/*"})
    assert headers["content-type"] == "application/json" and json.loads(body)["metrics"]
    status, _, body = get(server.port, "/metrics?format=yaml")
    assert status == 400 and b"format" in body


def test_errors_404_405_head(served: tuple[HealthServer, MutableSource]) -> None:
    server, _ = served
    assert get(server.port, "/")[0] == 404
    assert get(server.port, "/health/x")[0] == 404
    assert get(server.port, "/admin")[0] == 404
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
        status, headers, _ = get(server.port, "/health", method=method)
        assert status == 405, method
        assert headers["allow"] == "GET, HEAD"
    status, headers, body = get(server.port, "/health", method="HEAD")
    assert status == 200 and body == b""
    assert int(headers["content-length"]) == len(b'{"status":"ok","reason":"healthy"}')


@pytest.mark.parametrize(
    ("request_bytes", "expected"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /health\r\n\r\n", 400),
        (b"GET /health HTTP/1.1 extra\r\n\r\n", 400),
        (b"GET /health HTTX/1.1\r\n\r\n", 400),
        (b"GET /health HTTP/2.0\r\n\r\n", 505),
        (b"GET health HTTP/1.1\r\n\r\n", 400),
        (b"GET /health HTTP/1.1\r\nNoColonHere\r\n\r\n", 400),
        (b"GET /health HTTP/1.1\r\nX: a\r\n folded\r\n\r\n", 400),
        (b"GET /h\xffalth HTTP/1.1\r\n\r\n", 400),
        (b"GET /health HTTP/1.1\r\nX: a\x00b\r\n\r\n", 400),
        (b"G(T /health HTTP/1.1\r\n\r\n", 400),
        (b"GET /health HTTP/1.1\r\nContent-Length: abc\r\n\r\n", 400),
        (b"GET /health HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", 413),
        (b"GET /health HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 413),
        (b"POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", 405),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 414),
        (b"GET /health HTTP/1.1\r\n" + b"X-Big: " + b"a" * 20000 + b"\r\n\r\n", 431),
        (b"GET /health HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(150)) + b"\r\n", 431),
        (b"GET /metrics?format=%ff HTTP/1.1\r\n\r\n", 400),
        (b"GET /health HTTP/1.0\n\n", 200),
        (b"GET http://localhost/health HTTP/1.1\r\n\r\n", 200),
    ],
)
def test_malformed_requests(served: tuple[HealthServer, MutableSource], request_bytes: bytes,
                            expected: int) -> None:
    server, _ = served
    response = raw(server.port, request_bytes)
    assert status_of(response) == expected, response[:300]
    assert b"Traceback" not in response and b"File \"" not in response
    assert b"Connection: close" in response


def test_token_matrix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROCGUARD_HEALTH_TOKEN", "s3cret-token")
    for mode in MODES:
        with serve_health(MutableSource(), mode=mode) as server:
            port = server.port
            assert get(port, "/health")[0] == 200  # probes stay open
            assert get(port, "/ready")[0] == 200
            status, headers, body = get(port, "/metrics")
            assert status == 401 and headers["www-authenticate"].startswith("Bearer")
            assert b"s3cret" not in body
            for header in ("Bearer wrong", "Bearer s3cret-token-and-more", "Basic s3cret-token",
                           "s3cret-token", "Bearer ", "bearer"):
                assert get(port, "/metrics", headers={"Authorization": header})[0] == 401, (mode, header)
            for header in ("Bearer s3cret-token", "bearer s3cret-token", "Bearer  s3cret-token "):
                assert get(port, "/metrics", headers={"Authorization": header})[0] == 200, (mode, header)
            assert get(port, "/metrics?format=prometheus",
                       headers={"Authorization": "Bearer s3cret-token"})[0] == 200
            assert get(port, "/metrics", method="HEAD")[0] == 401
        # an explicit empty token turns the environment's off
        with serve_health(MutableSource(), mode=mode, token="") as server:
            assert get(server.port, "/metrics")[0] == 200
        with serve_health(MutableSource(), mode=mode, token="other") as server:
            assert get(server.port, "/metrics", headers={"Authorization": "Bearer other"})[0] == 200
            assert get(server.port, "/metrics", headers={"Authorization": "Bearer s3cret-token"})[0] == 401


def test_no_secrets_in_any_response(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPER_SECRET_PASSWORD", "hunter2-zebra")
    source = MutableSource()
    source.set(name="w")
    for mode in MODES:
        with serve_health(source, mode=mode, token="") as server:
            bodies = []
            for path in ("/health", "/ready", "/metrics", "/metrics?format=prometheus",
                         "/metrics?format=openmetrics", "/nope"):
                bodies.append(get(server.port, path)[2])
            bodies.append(raw(server.port, b"BROKEN\r\n\r\n"))
            for body in bodies:
                assert b"hunter2" not in body and b"SUPER_SECRET" not in body
                assert b"pytest" not in body  # nothing of argv either


def test_responder_environment_is_trimmed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPER_SECRET_PASSWORD", "hunter2-zebra")
    monkeypatch.setenv("PROCGUARD_HEALTH_TOKEN", "tok-in-env")
    with serve_health(MutableSource(), mode="process") as server:
        assert server.responder_pid is not None
        responder = psutil.Process(server.responder_pid)
        assert "SUPER_SECRET_PASSWORD" not in responder.environ()
        assert "PROCGUARD_HEALTH_TOKEN" not in responder.environ()
        assert not any("tok-in-env" in arg for arg in responder.cmdline())
        assert get(server.port, "/metrics", headers={"Authorization": "Bearer tok-in-env"})[0] == 200


def test_port_in_use_names_the_port() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        for mode in MODES:
            with pytest.raises(UsageError, match=rf"health port {port} .*already in use"):
                serve_health(MutableSource(), port=port, mode=mode)


@pytest.mark.parametrize("port", [-1, 70000, "9091", True])
def test_bad_port_is_usage_error(port: object) -> None:
    with pytest.raises(UsageError, match="not a port number"):
        serve_health(MutableSource(), port=port)  # type: ignore[arg-type]


def test_bad_host_is_usage_error() -> None:
    with pytest.raises(UsageError, match="health host"):
        serve_health(MutableSource(), host="no-such-host.invalid")


@pytest.mark.parametrize("mode", MODES)
def test_close_releases_port_and_responder(mode: str) -> None:
    server = serve_health(MutableSource(), mode=mode)
    port, responder = server.port, server.responder_pid
    assert get(port, "/health")[0] == 200
    server.close()
    server.close()  # idempotent
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))  # free again
    if responder is not None:
        assert not psutil.pid_exists(responder) or psutil.Process(responder).status() == psutil.STATUS_ZOMBIE


def test_responder_killed_alone_is_restarted() -> None:
    with serve_health(MutableSource(), mode="process", publish_interval_s=0.05) as server:
        first = server.responder_pid
        assert first is not None and get(server.port, "/health")[0] == 200
        os.kill(first, 9)
        wait_for(lambda: server.responder_pid not in (None, first), message="a new responder")
        status = wait_for(lambda: _try_status(server.port, "/health"), message="/health answering again")
        assert status == 200


def _try_status(port: int, path: str) -> int | None:
    try:
        return get(port, path)[0]
    except OSError:
        return None


def test_source_failure_is_503_without_traceback() -> None:
    def broken() -> WorkerSnapshot:
        raise RuntimeError("secret internals")

    with serve_health(broken, mode="thread") as server:
        status, _, body = get(server.port, "/health")
        assert status == 503 and json.loads(body)["status"] == "unhealthy"
        status, _, body = get(server.port, "/metrics")
        assert status == 500 and b"secret" not in body and b"Traceback" not in body


@pytest.mark.parametrize("mode", MODES)
def test_thousand_malformed_requests_leave_health_answering(mode: str) -> None:
    junk = [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(64) + b"\r\n\r\n",  # TLS hello
        b"GET / HTTP/1.1\r\nHost: x\r\n" + b"A" * 17000,
        b"\r\n\r\n",
        b"GET /health HTTP/9.9\r\n\r\n",
        b"POST /health HTTP/1.1\r\nContent-Length: 100000000\r\n\r\n" + b"x" * 1000,
        b"GET /../../etc/passwd HTTP/1.1\r\n\r\n",
        b"GET /metrics?format=%%%% HTTP/1.1\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: " + b"\x01" * 10 + b"\r\n\r\n",
        os.urandom(200),
        b"GET /hea",  # truncated: the client closes mid-head
    ]
    with serve_health(MutableSource(), mode=mode) as server:
        for i in range(1000):
            response = raw(server.port, junk[i % len(junk)])
            assert b"Traceback" not in response
            if response:
                assert 400 <= status_of(response) < 600 or status_of(response) == 404, response[:100]
        assert get(server.port, "/health")[0] == 200


@pytest.mark.parametrize("mode", MODES)
def test_idle_connections_do_not_block_a_probe(mode: str) -> None:
    with serve_health(MutableSource(), mode=mode) as server:
        idle = []
        try:
            for i in range(200):
                s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
                if i % 2:
                    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # head never finished
                idle.append(s)
            start = time.monotonic()
            status, _, _ = get(server.port, "/health")
            assert status == 200
            assert time.monotonic() - start < 5.0  # answered now, not after the idle ones time out
        finally:
            for s in idle:
                s.close()


def test_more_connections_than_the_cap_still_let_probes_in() -> None:
    with serve_health(MutableSource(), mode="process", max_connections=20) as server:
        idle = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(60)]
        try:
            assert get(server.port, "/health")[0] == 200
        finally:
            for s in idle:
                s.close()


def test_slow_client_is_dropped_after_request_timeout() -> None:
    with serve_health(MutableSource(), mode="process", request_timeout_s=0.5) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.sendall(b"GET /health HTTP/1.1\r\n")  # then nothing: slowloris
            start = time.monotonic()
            assert s.recv(100) == b""  # the server closes it
            assert time.monotonic() - start < 8.0
        assert get(server.port, "/health")[0] == 200


def test_concurrent_probes_all_answered() -> None:
    with serve_health(MutableSource(), mode="process") as server:
        results: list[int] = []

        def probe() -> None:
            for _ in range(20):
                results.append(get(server.port, "/health")[0])

        threads = [threading.Thread(target=probe) for _ in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert results == [200] * 200


def test_health_server_standalone_start_and_context_manager() -> None:
    server = HealthServer(MutableSource(), mode="thread")
    assert server.start() is server
    try:
        assert get(server.port, "/ready")[0] == 200
    finally:
        server.close()
    with HealthServer(MutableSource()) as server:
        assert server.mode == "process"
        assert get(server.port, "/ready")[0] == 200


def test_unknown_mode_is_usage_error() -> None:
    with pytest.raises(UsageError, match="mode"):
        HealthServer(MutableSource(), mode="fork")  # type: ignore[arg-type]


def test_falls_back_to_thread_mode_when_no_responder_can_start(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    with serve_health(MutableSource(), mode="process") as server:
        assert server.mode == "thread" and server.responder_pid is None
        assert get(server.port, "/health")[0] == 200


def test_request_head_trickling_in_byte_by_byte_is_answered() -> None:
    with serve_health(MutableSource(), mode="process") as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for byte in b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n":
                s.send(bytes([byte]))
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        assert status_of(data) == 200


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_close_in_a_forked_child_leaves_the_parents_responder_alone() -> None:
    with serve_health(MutableSource(), mode="process") as server:
        responder = server.responder_pid
        pid = os.fork()
        if pid == 0:  # the child: a multiprocessing-style fork of the worker
            try:
                server.close()
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert status == 0
        assert psutil.Process(responder).is_running()  # type: ignore[arg-type]
        assert get(server.port, "/health")[0] == 200


def test_a_responder_that_cannot_run_hands_over_to_a_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil
    import sys

    false = shutil.which("false")
    assert false is not None
    monkeypatch.setattr(sys, "executable", false)  # starts fine, exits 1 at once, every time
    with serve_health(MutableSource(), mode="process", publish_interval_s=0.05) as server:
        wait_for(lambda: server.mode == "thread", message="the switch to thread mode")
        assert server.responder_pid is None
        assert get(server.port, "/health")[0] == 200


def test_published_mode_only_publishes_into_the_given_mapping() -> None:
    """Under procguard up the supervisor holds the port: the worker's server binds nothing, starts no
    process, and publishes into the mapping it was handed (at start, on refresh, and periodically)."""
    from procguard.health.shared import PublishedView, SnapshotReader, create_buffer

    from .helpers import free_port

    source = MutableSource()
    fd, buffer = create_buffer()
    view = PublishedView(SnapshotReader(buffer))
    port = free_port()
    children_before = {p.pid for p in psutil.Process().children()}
    server = serve_health(source, port=port, mode="published", shared_fd=os.dup(fd), publish_interval_s=0.05)
    try:
        assert server.mode == "published" and server.port == port and server.responder_pid is None
        assert {p.pid for p in psutil.Process().children()} == children_before
        with socket.socket() as s:  # the port is not ours: still free to bind
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
        assert view.current().iterations == 3  # published at start
        source.set(ready=HealthStatus(False, "warming up"))
        server.refresh()
        assert view.current().ready == HealthStatus(False, "warming up")  # at once on refresh
        source.set(iterations=42)
        wait_for(lambda: view.current().iterations == 42, message="a periodic publish")
    finally:
        server.close()
        os.close(fd)
    with pytest.raises(UsageError, match="shared_fd"):
        HealthServer(source, mode="published")
