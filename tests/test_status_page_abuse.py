"""The status page of a real supervisor under abuse: idle floods, slowloris, hostile Host, odd methods.

Every test talks to ``procguard up --status-port P`` over real sockets on
127.0.0.1 and reads the supervisor's threads and memory from /proc.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from procguard.supervisor.statuspage import HostCheck

from .helpers import free_port, stop_process_tree, wait_for
from .supervisor_workers.stackkit import Stack, worker_cmd, write_config

FAST = "start_period_s=0.3,sample_interval_s=0.2"
#: Unique to this run: an ``up`` stops stale processes of its project name, and other
#: suites may run stacks named ``teststack`` on this machine at the same time.
PROJECT = f"page{os.getpid()}"


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, int]]:
    """One supervisor for the whole module (each test leaves it as it found it); stopped at the end."""
    tmp_path = tmp_path_factory.mktemp("page")
    started: list[subprocess.Popen[bytes]] = []

    def spawn(argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, **kwargs)
        started.append(proc)
        return proc

    port = free_port()
    config = write_config(tmp_path, {"ticker": {"command": worker_cmd("ticker.py", tmp_path / "ticks")}},
                          project=PROJECT, defaults={"grace": "5s"}, status_port=port)
    stack = Stack(config, tmp_path / "state", spawn, project=PROJECT, tuning=FAST)
    for var in ("PROCGUARD_INSTANCE", "NOTIFY_SOCKET", "WATCHDOG_USEC"):  # set up before the autouse scrub
        stack.env.pop(var, None)
    try:
        stack.up()
        stack.wait_state("ticker", "running")
        wait_for(lambda: _answers(port), message="the status page to answer")
        yield stack, port
    finally:
        for proc in started:
            stop_process_tree(proc, grace=5)


def _answers(port: int) -> bool:
    try:
        return exchange(port, b"GET /api/supervisor HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")[0] == 200
    except OSError:
        return False


def exchange(port: int, request: bytes, *, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes, read until the server closes: (status, headers, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def get(port: int, path: str, host: str | None = "127.0.0.1", **extra: str) -> tuple[int, dict[str, str], bytes]:
    lines = [f"GET {path} HTTP/1.1"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in extra.items()]
    return exchange(port, ("\r\n".join(lines) + "\r\n\r\n").encode())


def supervisor_pid(port: int) -> int:
    return int(json.loads(get(port, "/api/supervisor")[2])["pid"])


def threads_and_rss_kb(pid: int) -> tuple[int, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.split()[0] if value.split() else ""
    return int(fields["Threads"]), int(fields["VmRSS"])


def open_idle(port: int, count: int) -> list[socket.socket]:
    """``count`` connections that never finish a request (half of them send part of a head)."""
    socks = []
    for i in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        if i % 2:
            sock.sendall(b"GET /api/workers HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        socks.append(sock)
    return socks


def test_hundreds_of_idle_connections_cost_no_thread_and_little_memory(page: tuple[Stack, int]) -> None:
    _stack, port = page
    pid = supervisor_pid(port)
    for _ in range(20):  # warm up: the page, the JSON and /metrics have each been served once
        for path in ("/", "/api/workers", "/metrics"):
            assert get(port, path)[0] == 200
    threads_before, rss_before = threads_and_rss_kb(pid)
    idle = open_idle(port, 400)
    try:
        # A normal client is answered at once, during the flood.
        started = time.monotonic()
        status, headers, body = get(port, "/api/workers")
        assert status == 200 and headers["content-type"] == "application/json"
        assert json.loads(body)[0]["name"] == "ticker"
        assert get(port, "/")[0] == 200 and get(port, "/metrics")[0] == 200
        assert time.monotonic() - started < 3.0
        threads_during, rss_during = threads_and_rss_kb(pid)
    finally:
        for sock in idle:
            sock.close()
    # One thread serves every connection: a thread per connection would be 400 more.
    assert threads_during == threads_before, (threads_before, threads_during)
    assert rss_during - rss_before < 4 * 1024, (rss_before, rss_during)  # KB; was ~10 MB per 400
    assert get(port, "/api/workers")[0] == 200
    threads_after, _rss_after = threads_and_rss_kb(pid)
    assert threads_after == threads_before


def test_slowloris_is_dropped_and_the_page_keeps_answering(page: tuple[Stack, int]) -> None:
    _stack, port = page
    with socket.create_connection(("127.0.0.1", port), timeout=20) as slow:
        slow.sendall(b"GET /api/workers HTTP/1.1\r\n")
        started = time.monotonic()
        closed = False
        try:
            while time.monotonic() - started < 15:
                assert get(port, "/api/workers")[0] == 200  # others are served meanwhile
                slow.sendall(b"X")  # one byte at a time, never the end of the head
                slow.settimeout(0.5)
                try:
                    if slow.recv(100) == b"":
                        closed = True
                        break
                except TimeoutError:
                    continue
        except (ConnectionResetError, BrokenPipeError):
            closed = True
        assert closed, "a head trickling in forever must be cut off"
        assert time.monotonic() - started < 10  # the 5 s request timeout, with room for a busy machine


@pytest.mark.parametrize("host", ["evil.example", "evil.example:{port}", "127.0.0.1.evil.example",
                                  "localhost.evil.example", "[::1", "127.0.0.1:x", ""])
def test_foreign_host_header_is_refused_dns_rebinding(page: tuple[Stack, int], host: str) -> None:
    _stack, port = page
    for path in ("/", "/api/workers", "/api/supervisor", "/metrics"):
        status, headers, body = get(port, path, host=host.format(port=port))
        assert status == 403, (path, status, body[:200])
        assert headers["content-type"] == "application/json"
        assert b"ticker" not in body and b"procguard_" not in body


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.1:{port}", "localhost", "LocalHost:{port}",
                                  "localhost.", "[::1]:{port}", "127.0.0.2", None])
def test_own_host_header_is_answered(page: tuple[Stack, int], host: str | None) -> None:
    _stack, port = page
    status, _, body = get(port, "/api/workers", host=None if host is None else host.format(port=port))
    assert status == 200 and json.loads(body)[0]["name"] == "ticker"


@pytest.mark.parametrize("request_line", [
    b"OPTIONS / HTTP/1.1", b"OPTIONS * HTTP/1.1", b"TRACE / HTTP/1.1", b"TRACE /api/workers HTTP/1.1",
    b"POST /api/workers HTTP/1.1", b"PUT /metrics HTTP/1.1", b"DELETE / HTTP/1.1", b"PATCH / HTTP/1.1",
    b"CONNECT 127.0.0.1:22 HTTP/1.1", b"PROPFIND / HTTP/1.1",
])
def test_other_methods_get_405_json_with_allow(page: tuple[Stack, int], request_line: bytes) -> None:
    _stack, port = page
    status, headers, body = exchange(port, request_line + b"\r\nHost: 127.0.0.1\r\n\r\n")
    if request_line.startswith(b"CONNECT"):
        assert status == 400  # not a path: refused as malformed, still JSON
    else:
        assert status == 405, body
        assert headers["allow"] == "GET, HEAD"
    assert headers["content-type"] == "application/json"
    assert "error" in json.loads(body)
    assert b"<html" not in body.lower() and b"Traceback" not in body


def test_oversized_and_malformed_heads_get_one_json_error(page: tuple[Stack, int]) -> None:
    _stack, port = page
    cases = [
        (b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"b" * 20_000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-A: 1\r\n" * 150 + b"\r\n", 431),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),  # a TLS hello
        (b"GET / HTTP/2.0\r\nHost: 127.0.0.1\r\n\r\n", 505),
        (b"GET /api/workers HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n\r\nhello", 413),
    ]
    for request, expected in cases:
        status, headers, body = exchange(port, request)
        assert status == expected, (request[:60], status, body[:200])
        assert headers["content-type"] == "application/json" and b"Traceback" not in body
    assert get(port, "/api/workers")[0] == 200


def test_head_and_routes_keep_their_bodies(page: tuple[Stack, int]) -> None:
    _stack, port = page
    status, headers, body = exchange(port, b"HEAD /api/workers HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert status == 200 and body == b"" and int(headers["content-length"]) > 10
    status, headers, body = get(port, "/index.html")
    assert status == 200 and headers["content-type"].startswith("text/html") and b"<html" in body.lower()
    assert json.loads(get(port, "/api/supervisor")[2])["project"] == PROJECT
    status, headers, body = get(port, "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert b'worker="ticker"' in body
    status, headers, _ = get(port, "/metrics?format=openmetrics")
    assert status == 200 and headers["content-type"].startswith("application/openmetrics-text")
    status, headers, _ = get(port, "/metrics", Accept="application/openmetrics-text; version=1.0.0")
    assert headers["content-type"].startswith("application/openmetrics-text")
    assert get(port, "/metrics?format=xml")[0] == 400
    assert get(port, "/nope")[0] == 404
    for _status, headers, _body in (get(port, "/"), get(port, "/nope")):
        assert headers["connection"] == "close" and headers["x-content-type-options"] == "nosniff"


# -- which Host headers, decided without sockets ------------------------------------------


def test_host_check_for_a_loopback_bind() -> None:
    check = HostCheck("127.0.0.1")
    for ok in ("127.0.0.1", "127.0.0.1:9100", "localhost", "localhost:1", "[::1]", "[::1]:9100",
               "127.9.9.9", "LOCALHOST.", None):
        assert check.allows(ok), ok
    for bad in ("evil.example", "10.0.0.1", "[::2]:80", "my-host", "localhost:port", "", ":9100",
                "[::1]x", "[nope]:1", "127.0.0.1:-1"):
        assert not check.allows(bad), bad


def test_host_check_for_a_specific_and_a_wildcard_bind() -> None:
    lan = HostCheck("192.168.7.5")
    assert lan.allows("192.168.7.5:9100") and lan.allows("localhost") and lan.allows("127.0.0.1")
    assert not lan.allows("192.168.7.6") and not lan.allows("box") and not lan.allows("evil.example")
    named = HostCheck("box.lan")
    assert named.allows("box.lan:9100") and named.allows("BOX.LAN") and not named.allows("evil.example")
    for wildcard in ("0.0.0.0", "::", ""):
        check = HostCheck(wildcard, hostname="box.example.org")
        assert check.wildcard
        for ok in ("10.1.2.3:9100", "[fe80::1]:9100", "box", "box.example.org:9100", "localhost"):
            assert check.allows(ok), (wildcard, ok)
        for bad in ("evil.example", "box.evil.example", "example.org"):
            assert not check.allows(bad), (wildcard, bad)
