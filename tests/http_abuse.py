"""Hostile HTTP shared by the tests of every port procguard serves (status page, health ports).

Raw sockets on 127.0.0.1, so each case sends exactly the bytes it means to:
no client library tidies a request line or a header up first.
"""

from __future__ import annotations

import socket
from pathlib import Path

#: ``Host`` headers a server bound to 127.0.0.1 must refuse (``{port}``: the server's port).
FOREIGN_HOSTS = ["evil.example", "evil.example:{port}", "127.0.0.1.evil.example",
                 "localhost.evil.example", "[::1", "127.0.0.1:x", ""]
#: ``Host`` headers it must answer (None: no Host header at all, as HTTP/1.0 tools send).
OWN_HOSTS = ["127.0.0.1", "127.0.0.1:{port}", "localhost", "LocalHost:{port}", "localhost.",
             "[::1]:{port}", "127.0.0.2", None]
#: Request lines with a method other than GET and HEAD (CONNECT's target is not a path: 400).
OTHER_METHODS = [
    b"OPTIONS / HTTP/1.1", b"OPTIONS * HTTP/1.1", b"TRACE / HTTP/1.1", b"TRACE {path} HTTP/1.1",
    b"POST {path} HTTP/1.1", b"PUT /metrics HTTP/1.1", b"DELETE / HTTP/1.1", b"PATCH / HTTP/1.1",
    b"CONNECT 127.0.0.1:22 HTTP/1.1", b"PROPFIND / HTTP/1.1",
]


def malformed_heads(path: str) -> list[tuple[bytes, int]]:
    """Oversized and malformed request heads for a server answering ``path``, with the status each gets."""
    target = path.encode()
    return [
        (b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 414),
        (b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"b" * 20_000 + b"\r\n\r\n", 431),
        (b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-A: 1\r\n" * 150 + b"\r\n", 431),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),  # a TLS hello
        (b"GET " + target + b" HTTP/2.0\r\nHost: 127.0.0.1\r\n\r\n", 505),
        (b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n\r\nhello", 413),
    ]


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
    """GET ``path`` with ``Host: host`` (none when None) and ``extra`` headers (``_`` becomes ``-``)."""
    lines = [f"GET {path} HTTP/1.1"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in extra.items()]
    return exchange(port, ("\r\n".join(lines) + "\r\n\r\n").encode())


def threads_and_rss_kb(pid: int) -> tuple[int, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.split()[0] if value.split() else ""
    return int(fields["Threads"]), int(fields["VmRSS"])


def open_idle(port: int, count: int, path: str) -> list[socket.socket]:
    """``count`` connections that never finish a request (half of them send part of a head)."""
    socks = []
    for i in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        if i % 2:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode())
        socks.append(sock)
    return socks


def slowloris_is_cut(port: int, path: str, *, within: float = 10.0) -> bool:
    """A head trickling in one byte at a time is cut off (within ``within`` s) while others are served."""
    import time

    with socket.create_connection(("127.0.0.1", port), timeout=20) as slow:
        slow.sendall(f"GET {path} HTTP/1.1\r\n".encode())
        started = time.monotonic()
        try:
            while time.monotonic() - started < 15:
                assert get(port, path)[0] in (200, 503)  # others are served meanwhile
                slow.sendall(b"X")
                slow.settimeout(0.5)
                try:
                    if slow.recv(100) == b"":
                        break
                except TimeoutError:
                    continue
            else:
                return False
        except (ConnectionResetError, BrokenPipeError):
            pass
        return time.monotonic() - started < within


def assert_token_guards_metrics(port: int, token: str) -> None:
    """/health and /ready open, /metrics 401 (with the Bearer challenge) without or with a wrong token,
    200 with ``token``."""
    assert get(port, "/health")[0] == 200 and get(port, "/ready")[0] == 200
    status, headers, _ = get(port, "/metrics")
    assert status == 401 and headers["www-authenticate"].startswith("Bearer")
    assert get(port, "/metrics", Authorization="Bearer wrong")[0] == 401
    assert get(port, "/metrics", Authorization=f"Bearer {token}")[0] == 200
