"""A bounded loopback HTTP load generator: a fixed request rate, one connection per request.

Each request opens a new TCP connection to 127.0.0.1, sends ``GET PATH`` with
``Connection: close`` and reads the whole answer, so every request meets the
listening socket (a refused connection is counted, never hidden by a kept-alive
one). Requests are scheduled at ``rate`` per second from the start, sent by a
fixed pool of threads (a slow answer delays the next one of that thread, the
schedule catches up); nothing is retried. Bounded: the rate, the pool, and a
timeout per request.

A result is ``(sent_at, latency_s, error)`` with ``error`` "" for a 200,
else a short token: ``refused``, ``reset``, ``timeout``, ``status NNN``,
``short`` (connection closed before a full answer).
"""

from __future__ import annotations

import math
import socket
import threading
import time
from dataclasses import dataclass, field

#: Seconds a request may take before it counts as failed.
REQUEST_TIMEOUT_S = 5.0


@dataclass
class Result:
    sent_at: float  # monotonic
    latency_s: float
    error: str


@dataclass
class LoadGen:
    """``rate`` requests/s to ``http://127.0.0.1:PORT/PATH`` from ``threads`` threads, until :meth:`stop`."""

    port: int
    path: str = "/"
    rate: float = 200.0
    threads: int = 16
    results: list[Result] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._next = 0
        self._started = 0.0
        self._pool: list[threading.Thread] = []
        self._request = (
            f"GET {self.path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nConnection: close\r\n\r\n"
        ).encode()

    def start(self) -> LoadGen:
        self._started = time.monotonic()
        for i in range(self.threads):
            thread = threading.Thread(target=self._run, name=f"loadgen-{i}", daemon=True)
            thread.start()
            self._pool.append(thread)
        return self

    def stop(self) -> list[Result]:
        self._stop.set()
        for thread in self._pool:
            thread.join(timeout=REQUEST_TIMEOUT_S + 1)
        with self._lock:
            return list(self.results)

    def __enter__(self) -> LoadGen:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _slot(self) -> float:
        with self._lock:
            n = self._next
            self._next += 1
        return self._started + n / self.rate

    def _run(self) -> None:
        while not self._stop.is_set():
            due = self._slot()
            delay = due - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                return
            sent = time.monotonic()
            error = self._one()
            result = Result(sent, time.monotonic() - sent, error)
            with self._lock:
                self.results.append(result)

    def _one(self) -> str:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=REQUEST_TIMEOUT_S) as sock:
                sock.sendall(self._request)
                data = b""
                while True:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    data += chunk
        except ConnectionRefusedError:
            return "refused"
        except (ConnectionResetError, BrokenPipeError):
            return "reset"
        except TimeoutError:
            return "timeout"
        except OSError as error:
            return f"error {error.errno}"
        head, _, body = data.partition(b"\r\n\r\n")
        status = head.split(b" ", 2)[1:2]
        if not status:
            return "short"
        if status[0] != b"200":
            return f"status {status[0].decode(errors='replace')}"
        length = _content_length(head)
        if length is not None and len(body) < length:
            return "short"
        return ""


def _content_length(head: bytes) -> int | None:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            try:
                return int(value.strip())
            except ValueError:
                return None
    return None


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) of ``values``, nearest rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(round(q * len(ordered), 9)) - 1))
    return ordered[rank]


def summary(results: list[Result]) -> dict[str, object]:
    """Counts, failures by kind, achieved rate and latency percentiles (ms) of ``results``."""
    failures: dict[str, int] = {}
    for result in results:
        if result.error:
            failures[result.error] = failures.get(result.error, 0) + 1
    latencies = [r.latency_s * 1000 for r in results if not r.error]
    span = (max(r.sent_at for r in results) - min(r.sent_at for r in results)) if len(results) > 1 else 0.0
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    return {
        "requests": len(results),
        "failed": sum(failures.values()),
        "failures": failures,
        "rate": round(len(results) / span, 1) if span else None,
        "p50_ms": None if p50 is None else round(p50, 2),
        "p99_ms": None if p99 is None else round(p99, 2),
        "max_ms": round(max(latencies), 2) if latencies else None,
    }
