"""The status page of ``procguard up --status-port P``: HTML, JSON and Prometheus.

- ``GET /`` -- one self-contained HTML page (``static/index.html``: inline
  CSS and JS, no build step, no external asset) that refreshes itself from
  ``/api/workers`` and draws a small memory/CPU chart per worker.
- ``GET /api/workers`` -- the ``status --json`` list, each object with its
  recent ``samples`` (``[unix time, memory MB, CPU %]``) added.
- ``GET /metrics`` -- Prometheus text for all workers (OpenMetrics when the
  ``Accept`` header or ``?format=openmetrics`` asks for it).

It binds 127.0.0.1 unless told otherwise and only reads the immutable
:class:`~procguard.supervisor.view.View` the event loop publishes, so
a slow browser can never stall supervision. prometheus_client is imported
on the first ``/metrics`` request only, to keep the supervisor small.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

if TYPE_CHECKING:
    from .view import View

logger = logging.getLogger(__name__)

PAGE_PATH = Path(__file__).with_name("static") / "index.html"


class _Handler(BaseHTTPRequestHandler):
    server: _StatusHTTPServer
    server_version = "procguard"
    sys_version = ""

    def do_GET(self) -> None:
        try:
            self._route()
        except Exception:  # never a stack trace in a response
            logger.exception("status page: error serving %s", self.path)
            self._send(500, b'{"error": "internal error"}', "application/json")

    def do_HEAD(self) -> None:
        self.do_GET()

    def _not_allowed(self) -> None:
        self._send(405, b'{"error": "method not allowed (use GET)"}', "application/json", allow="GET, HEAD")

    do_POST = do_PUT = do_DELETE = do_PATCH = _not_allowed

    def _route(self) -> None:
        url = urlsplit(self.path)
        view = self.server.view_source()
        if url.path in ("/", "/index.html"):
            self._send(200, self.server.page(), "text/html; charset=utf-8")
        elif url.path == "/api/workers":
            body = json.dumps(view.workers, separators=(",", ":")).encode()
            self._send(200, body, "application/json")
        elif url.path == "/api/supervisor":
            body = json.dumps({"project": view.project, "pid": view.supervisor_pid}).encode()
            self._send(200, body, "application/json")
        elif url.path == "/metrics":
            self._metrics(view, url.query)
        else:
            self._send(404, b'{"error": "not found (use /, /api/workers or /metrics)"}', "application/json")

    def _metrics(self, view: View, query: str) -> None:
        from ..health.exposition import negotiate
        from .metrics import render_metrics

        fmt = negotiate(parse_qs(query).get("format", [None])[0], self.headers.get("Accept"))
        if fmt is None:
            self._send(
                400, b'{"error": "unknown format (use prometheus or openmetrics)"}', "application/json"
            )
            return
        body, content_type = render_metrics(view, openmetrics=fmt == "openmetrics")
        self._send(200, body, content_type)

    def _send(self, code: int, body: bytes, content_type: str, **headers: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for key, value in headers.items():
            self.send_header(key.replace("_", "-").title(), value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("status page: " + format, *args)


class _StatusHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], view_source: Callable[[], View]) -> None:
        super().__init__(address, _Handler)
        self.view_source = view_source
        self._page: bytes | None = None

    def page(self) -> bytes:
        if self._page is None:
            self._page = PAGE_PATH.read_bytes()
        return self._page


class StatusServer:
    """A running status server; ``close()`` (or ``with``) stops it."""

    def __init__(self, view_source: Callable[[], View], *, host: str = "127.0.0.1", port: int = 0) -> None:
        self._httpd = _StatusHTTPServer((host, port), view_source)
        self.host = host
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.5},
            name="procguard-status",
            daemon=True,
        )
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> StatusServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
