"""The benchmark's load generator counts what it must: refused connections, wrong statuses, the rate."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from bench.head_to_head.loadgen import LoadGen, Result, percentile, summary

from .helpers import free_port


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status = 200 if self.path == "/ok" else 503
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_a_closed_port_is_refused_and_a_503_is_a_failure() -> None:
    port = free_port()  # nobody listens
    with LoadGen(port, "/", rate=50, threads=2) as load:
        time.sleep(0.3)
    refused = summary(load.results)
    assert refused["requests"] > 0 and refused["failures"] == {"refused": refused["requests"]}

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        with LoadGen(port, "/ok", rate=100, threads=4) as ok, LoadGen(port, "/bad", rate=20, threads=2) as bad:
            time.sleep(1.0)
    finally:
        server.shutdown()
        server.server_close()
    good = summary(ok.results)
    assert good["failed"] == 0 and 60 <= good["requests"] <= 130, good  # about the rate asked, never more
    assert good["p99_ms"] is not None and good["p99_ms"] >= good["p50_ms"]
    assert summary(bad.results)["failures"] == {"status 503": len(bad.results)}


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0 and percentile(values, 0.99) == 99.0 and percentile([], 0.5) is None
    results = [Result(0.0, 0.001, ""), Result(1.0, 0.002, "reset")]
    assert summary(results)["failures"] == {"reset": 1} and summary(results)["rate"] == 2.0
