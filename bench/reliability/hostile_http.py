"""Rows 5 and 6: hostile HTTP against a worker's health port and the supervisor's status page.

One attack, two targets. While a prober asks for the normal page (/health,
or /api/workers) every ``PROBE_EVERY_S``:

1. ``requests`` hostile requests from ``CLIENTS`` threads, cycling through
   a catalogue: every method (and made-up ones), bad Host headers, huge
   and malformed paths, oversized heads (long lines, many headers, a head
   of 1 MiB), garbage bytes (random, a TLS hello, an HTTP/2 preface, NULs),
   bodies the server does not want, pipelined and half-sent requests;
2. slowloris: ``slow`` connections trickling a request head one byte at a
   time for ``slow_s`` seconds;
3. ``idle`` connections opened and held without a byte sent, probed while
   they are held, then closed; then one last probe.

Everything stays on 127.0.0.1. What fails: a probe not answered 200 within
``PROBE_TIMEOUT_S`` (during or after), a response that shows a traceback, a
foreign Host answered with the page's data (the status page's
DNS-rebinding guard; the health port answers any Host by design), and the
server itself crashing (the caller checks its process and its log).
"""

from __future__ import annotations

import contextlib
import os
import random
import resource
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from .harness import Tally, percentile

CLIENTS = 8
PROBE_EVERY_S = 0.05
PROBE_TIMEOUT_S = 1.0
#: A hostile request's connection is given up after this long (the server may wait for more of a half-sent head).
CLIENT_TIMEOUT_S = 6.0
#: Connections for slowloris and for the idle phase are opened within this long, however slowly the server accepts.
OPEN_WITHIN_S = 30.0

METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "PROPFIND", "MKCOL",
           "LOCK", "BREW", "get", "G\x00T", "GET\t", "X" * 200, "", "M-SEARCH", "PRI"]
HOSTS = ["evil.example", "evil.example:80", "127.0.0.1.evil.example", "localhost.evil.example", "", " ",
         "127.0.0.1:99999", "[::1", "0x7f.0.0.1", "2130706433", "LOCALHOST:0", "\x01\x02", "h" * 5000,
         "127.0.0.1\r\nX-Injected: 1", "xn--80ak6aa92e.com", "%31%32%37.0.0.1", "127.0.0.1, evil.example"]
FOREIGN_HOSTS = {"evil.example", "evil.example:80", "127.0.0.1.evil.example", "localhost.evil.example",
                 "xn--80ak6aa92e.com", "127.0.0.1, evil.example", "0x7f.0.0.1", "2130706433"}
PATHS = ["/" + "a" * 9000, "/" + "a" * 70000, "/%00", "/../../../../etc/passwd", "/" + "%ff" * 1000, "*",
         "http://evil.example/health", "//health", "/health?" + "x=1&" * 5000, "/health#frag", "/\x7f",
         "/health/../health", "/%2e%2e/%2e%2e/etc/passwd", "/api/workers/../../x", "/metrics?format=%ff%fe",
         "/metrics?format=" + "a" * 8000, "health", "/health\x00", "/\xe2\x80\xa8"]


def _request(method: str, path: str, host: str | None = "127.0.0.1", extra: str = "") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\n" + (f"Host: {host}\r\n" if host is not None else "") + extra + "\r\n"
    return head.encode("latin-1", errors="replace")


def catalogue(page: str) -> list[tuple[str, bytes]]:
    """(kind, bytes) of every hostile request the attack cycles through."""
    items: list[tuple[str, bytes]] = []
    items += [("method", _request(m, page)) for m in METHODS]
    items += [("host", _request("GET", page, h)) for h in HOSTS]
    items += [("host", _request("GET", page, None)), ("host", _request("GET", page, "a", "Host: b\r\n"))]
    items += [("path", _request("GET", p)) for p in PATHS]
    items += [
        ("head", _request("GET", page, extra="X-Big: " + "a" * 20000 + "\r\n")),
        ("head", _request("GET", page, extra="".join(f"X-{i}: {i}\r\n" for i in range(300)))),
        ("head", _request("GET", page, extra="X: " + "b" * (1 << 20) + "\r\n")),
        ("head", _request("GET", page, extra="NoColonHere\r\n")),
        ("head", _request("GET", page, extra="X: a\r\n folded\r\n")),
        ("head", b"GET " + page.encode() + b" HTTP/1.1\n\n"),
        ("head", b"GET " + page.encode() + b" HTTP/1.1\r\n" + b"\r\n" * 0 + b"X: \xff\xfe\r\n\r\n"),
        ("head", b"GET " + page.encode() + b" HTTP/9.9\r\n\r\n"),
        ("head", b"GET " + page.encode() + b"\r\n\r\n"),
        ("head", b"GET " + page.encode() + b" HTTP/1.1 extra words\r\n\r\n"),
    ]
    items += [
        ("garbage", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(64)) + b"\r\n\r\n"),
        ("garbage", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00" * 64),
        ("garbage", b"\x00" * 4096),
        ("garbage", b"\r\n" * 5000),
        ("garbage", b"\xff" * 300 + b"\r\n\r\n"),
        ("garbage", b"random"),  # replaced by fresh random bytes at each use
    ]
    items += [
        ("body", _request("POST", page, extra="Content-Length: 100000000\r\n") + b"x" * 1000),
        ("body", _request("GET", page, extra="Content-Length: -5\r\n")),
        ("body", _request("GET", page, extra="Transfer-Encoding: chunked\r\n") + b"0\r\n\r\n"),
        ("body", _request("GET", page, extra="Expect: 100-continue\r\nContent-Length: 10\r\n")),
        ("body", _request("GET", page, extra="Content-Length: 5\r\nContent-Length: 6\r\n") + b"hello!"),
        ("pipelined", _request("GET", page) * 50),
        ("pipelined", _request("GET", page) + os.urandom(64)),
        ("half", b"GET " + page.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"),
        ("half", b"GET /hea"),
    ]
    return items


@dataclass
class Attack:
    """What one attack saw."""

    requests: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    failed_requests: list[str] = field(default_factory=list)  # one line per hostile request answered wrongly
    tracebacks: int = 0
    foreign_served: int = 0
    probes: list[float] = field(default_factory=list)
    probes_failed: list[str] = field(default_factory=list)
    slow_opened: int = 0
    slow_dropped: int = 0
    idle_opened: int = 0
    idle_probe_ms: float = float("nan")

    def count_into(self, tally: Tally) -> None:
        """One try per hostile request and per probe."""
        for _ in range(self.requests - len(self.failed_requests) + len(self.probes)):
            tally.record([])
        for why in self.failed_requests + self.probes_failed:
            tally.record([why])


def raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


def _exchange(port: int, payload: bytes, timeout: float = CLIENT_TIMEOUT_S) -> bytes:
    """Send ``payload``, half-close, read until the server closes (or ``timeout``)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(OSError):  # the server may close before it has read everything
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        deadline = time.monotonic() + timeout
        with contextlib.suppress(OSError):
            while time.monotonic() < deadline and sum(map(len, chunks)) < (1 << 20):
                data = sock.recv(65536)
                if not data:
                    break
                chunks.append(data)
        return b"".join(chunks)


def probe(port: int, path: str) -> tuple[int, float]:
    """GET ``path`` as a probe would: (status, seconds); status 0 when nothing usable came back in time."""
    start = time.monotonic()
    try:
        response = _exchange(port, _request("GET", path) + b"", timeout=PROBE_TIMEOUT_S)
    except OSError:
        return 0, time.monotonic() - start
    elapsed = time.monotonic() - start
    try:
        status = int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.") else 0
    except (IndexError, ValueError):
        status = 0
    return status, elapsed


class Prober:
    """Probes ``path`` every PROBE_EVERY_S in a thread; every failed or slow probe is kept."""

    def __init__(self, port: int, path: str, attack: Attack) -> None:
        self.port, self.path, self.attack = port, path, attack
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def once(self, when: str) -> float:
        status, elapsed = probe(self.port, self.path)
        if status == 200 and elapsed <= PROBE_TIMEOUT_S:
            self.attack.probes.append(elapsed)
        else:
            self.attack.probes_failed.append(f"probe {when}: status {status or 'none'} after {elapsed * 1000:.0f} ms")
        return elapsed

    def _run(self) -> None:
        while not self._stop.wait(PROBE_EVERY_S):
            self.once("during the attack")

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def _hostile(port: int, items: list[tuple[str, bytes]], count: int, attack: Attack, *, host_guard: bool,
             seed: int) -> None:
    rng = random.Random(seed)
    lock = threading.Lock()
    next_index = [0]

    def worker() -> None:
        while True:
            with lock:
                if next_index[0] >= count:
                    return
                index = next_index[0]
                next_index[0] += 1
            kind, payload = items[index % len(items)]
            if payload == b"random":
                payload = rng.randbytes(rng.choice((1, 16, 200, 4096)))
            try:
                response = _exchange(port, payload)
            except OSError:
                response = b""  # refused or reset: the server chose not to talk, which is allowed
            wrong = []
            if b"Traceback" in response or b'File "' in response:
                wrong.append("a traceback in the response")
            if host_guard and kind == "host" and response.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")):
                host = payload.split(b"Host: ", 1)[1].split(b"\r\n", 1)[0].decode("latin-1") \
                    if b"Host: " in payload else ""
                if host in FOREIGN_HOSTS:
                    wrong.append(f"Host: {host} was answered 200")
            with lock:
                attack.requests += 1
                attack.kinds[kind] = attack.kinds.get(kind, 0) + 1
                attack.tracebacks += any("traceback" in why for why in wrong)
                attack.foreign_served += any("Host" in why for why in wrong)
                if wrong:
                    attack.failed_requests.append(f"{kind} request {payload[:60]!r}: {'; '.join(wrong)}")

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _connect(port: int, count: int, within: float) -> list[socket.socket]:
    """Up to ``count`` connections, opened within ``within`` seconds (a server that accepts slowly gets fewer)."""
    socks: list[socket.socket] = []
    deadline = time.monotonic() + within
    while len(socks) < count and time.monotonic() < deadline:
        try:
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        except OSError:
            break
    return socks


def _slowloris(port: int, conns: int, seconds: float, attack: Attack) -> None:
    head = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100_000
    socks = _connect(port, conns, OPEN_WITHIN_S)
    attack.slow_opened = len(socks)
    sent = dict.fromkeys(socks, 0)
    end = time.monotonic() + seconds
    while socks and time.monotonic() < end:
        for sock in list(socks):
            try:
                sock.send(head[sent[sock]:sent[sock] + 1])
                sent[sock] += 1
                readable, _, _ = select.select([sock], [], [], 0)
                if readable and not sock.recv(4096):
                    raise ConnectionResetError
            except OSError:
                attack.slow_dropped += 1
                socks.remove(sock)
                sock.close()
        time.sleep(0.2)
    for sock in socks:
        sock.close()


@contextlib.contextmanager
def _idle(port: int, count: int, attack: Attack) -> Iterator[None]:
    socks = []
    try:
        socks = _connect(port, count, OPEN_WITHIN_S)
        attack.idle_opened = len(socks)
        yield
    finally:
        for sock in socks:
            sock.close()


def attack(port: int, page: str, *, requests: int, idle: int, slow: int, slow_s: float, host_guard: bool,
           alive: Callable[[], bool] = lambda: True, seed: int = 12) -> Attack:
    """The whole attack on 127.0.0.1:``port``, ``page`` probed throughout; see the module docstring."""
    raise_fd_limit(idle + slow + 256)
    result = Attack()
    prober = Prober(port, page, result)
    with prober:
        slow_thread = threading.Thread(target=_slowloris, args=(port, slow, slow_s, result), daemon=True)
        slow_thread.start()
        _hostile(port, catalogue(page), requests, result, host_guard=host_guard, seed=seed)
        slow_thread.join()
        with _idle(port, idle, result):
            result.idle_probe_ms = prober.once(f"with {idle} idle connections held") * 1000
    time.sleep(PROBE_EVERY_S)
    prober.once("after the attack")
    if not alive():
        result.probes_failed.append("the server's process is gone")
    return result


def figures(result: Attack) -> str:
    probes = result.probes
    return (f"{len(result.probes_failed)} probes failed of {len(probes) + len(result.probes_failed)} "
            f"(answered in {percentile(probes, 50) * 1000:.1f} ms median, p99 {percentile(probes, 99) * 1000:.1f} ms, "
            f"max {max(probes, default=float('nan')) * 1000:.0f} ms; {result.idle_probe_ms:.1f} ms with "
            f"{result.idle_opened} idle connections held); {result.tracebacks} tracebacks in responses; "
            f"slowloris: {result.slow_dropped} of {result.slow_opened} dropped by the server")
