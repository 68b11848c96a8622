"""The status page of a real supervisor under abuse: idle floods, slowloris, hostile Host, odd methods.

Every test talks to ``procguard up --status-port P`` over real sockets on
127.0.0.1 and reads the supervisor's threads and memory from /proc.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from procguard.supervisor.statuspage import HostCheck

from .helpers import free_port, stop_process_tree, wait_for
from .http_abuse import (
    FOREIGN_HOSTS,
    OTHER_METHODS,
    OWN_HOSTS,
    exchange,
    get,
    malformed_heads,
    open_idle,
    slowloris_is_cut,
    threads_and_rss_kb,
)
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


def supervisor_pid(port: int) -> int:
    return int(json.loads(get(port, "/api/supervisor")[2])["pid"])


def test_hundreds_of_idle_connections_cost_no_thread_and_little_memory(page: tuple[Stack, int]) -> None:
    _stack, port = page
    pid = supervisor_pid(port)
    for _ in range(20):  # warm up: the page, the JSON and /metrics have each been served once
        for path in ("/", "/api/workers", "/metrics"):
            assert get(port, path)[0] == 200
    threads_before, rss_before = threads_and_rss_kb(pid)
    idle = open_idle(port, 400, "/api/workers")
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
    assert slowloris_is_cut(port, "/api/workers"), "a head trickling in forever must be cut off within 10 s"


@pytest.mark.parametrize("host", FOREIGN_HOSTS)
def test_foreign_host_header_is_refused_dns_rebinding(page: tuple[Stack, int], host: str) -> None:
    _stack, port = page
    for path in ("/", "/api/workers", "/api/supervisor", "/metrics"):
        status, headers, body = get(port, path, host=host.format(port=port))
        assert status == 403, (path, status, body[:200])
        assert headers["content-type"] == "application/json"
        assert b"ticker" not in body and b"procguard_" not in body


@pytest.mark.parametrize("host", OWN_HOSTS)
def test_own_host_header_is_answered(page: tuple[Stack, int], host: str | None) -> None:
    _stack, port = page
    status, _, body = get(port, "/api/workers", host=None if host is None else host.format(port=port))
    assert status == 200 and json.loads(body)[0]["name"] == "ticker"


@pytest.mark.parametrize("request_line", OTHER_METHODS)
def test_other_methods_get_405_json_with_allow(page: tuple[Stack, int], request_line: bytes) -> None:
    _stack, port = page
    request_line = request_line.replace(b"{path}", b"/api/workers")
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
    cases = malformed_heads("/")
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
