"""The status page of ``procguard up --status-port P``: HTML, JSON and Prometheus.

- ``GET /`` (or ``/index.html``) -- one self-contained HTML page
  (``static/index.html``: inline CSS and JS, no build step, no external
  asset) that refreshes itself from ``/api/workers`` and draws a small
  memory/CPU chart per worker.
- ``GET /api/workers`` -- the ``status --json`` list, each object with its
  recent ``samples`` (``[unix time, memory MB, CPU %]``) added.
- ``GET /api/supervisor`` -- ``{"project", "pid"}``.
- ``GET /metrics`` -- Prometheus text for all workers (OpenMetrics when the
  ``Accept`` header or ``?format=openmetrics`` asks for it), rendered by
  :func:`metrics_body`.

It binds 127.0.0.1 unless told otherwise and only reads the immutable
:class:`~procguard.supervisor.view.View` the event loop publishes, so a
slow client can never stall supervision.

Any local user can connect to a port on 127.0.0.1, and any web page the
user opens can make the browser send requests to it. So the page is
served like the workers' health endpoints (:class:`procguard.health.loop.HttpLoop`):
one thread and a selector, at most ``max_connections`` connections (the
oldest one still sending its request is dropped for a new one), a request
head must arrive within ``request_timeout`` seconds (slowloris), bounded
and strictly parsed heads (:mod:`procguard.health.protocol`), every
response closes its connection. Thousands of idle connections cost no
thread and no memory beyond that bound. And it answers only requests whose
``Host`` header names it (:class:`HostCheck`): a web page on another origin
that re-resolves its own name to 127.0.0.1 (DNS rebinding) gets 403, not
the workers' list. Methods other than GET and HEAD get 405 with an
``Allow`` header.

prometheus_client is imported on the first ``/metrics`` request only, to
keep the supervisor small.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..health.loop import HttpLoop
from ..health.protocol import BadRequest, Request, Response, body_error, error, parse_head

if TYPE_CHECKING:
    import ssl

    from ..health.exposition import MetricsFormat
    from .view import View

logger = logging.getLogger(__name__)

PAGE_PATH = Path(__file__).with_name("static") / "index.html"

ALLOWED_METHODS = ("GET", "HEAD")
_ALLOW = (("Allow", ", ".join(ALLOWED_METHODS)),)

#: At most this many connections at once; past it the oldest one still sending its request is dropped.
MAX_CONNECTIONS = 128
#: A request head must arrive, and its response be read, within this many seconds.
REQUEST_TIMEOUT_S = 5.0


def metrics_body(view: View, fmt: MetricsFormat) -> tuple[bytes, str]:
    """The ``/metrics`` body and its content type for the negotiated ``fmt``.

    Prometheus text unless OpenMetrics is asked for (``json``, the health
    endpoints' default, also gets Prometheus text here). The one place that
    decides what ``/metrics`` renders.
    """
    from .metrics import render_metrics

    return render_metrics(view, openmetrics=fmt == "openmetrics")


class HostCheck:
    """Which ``Host`` headers the status page answers (the DNS-rebinding guard).

    Accepted, with or without a port: ``localhost``, any loopback literal
    (``127.0.0.1``, ``[::1]``), and the address or name the page is bound
    to. A wildcard bind (``0.0.0.0``, ``::``) is meant to be reached from
    other machines by address: it also accepts any IP literal and this
    machine's host name. A name anyone else can make resolve to us (the
    trick of DNS rebinding) is never accepted. A request without ``Host``
    (HTTP/1.0 tools; browsers always send one) is answered.
    """

    def __init__(self, bound_host: str, *, hostname: str | None = None) -> None:
        self._bound = _normalise(bound_host)
        self._bound_ip = _ip(self._bound)
        unspecified = self._bound_ip is not None and self._bound_ip.is_unspecified
        self.wildcard = self._bound in ("", "*") or unspecified
        names = {"localhost", self._bound}
        if self.wildcard:
            own = _normalise(socket.gethostname() if hostname is None else hostname)
            names |= {own, own.split(".")[0]}
        self._names = {name for name in names if name}

    def allows(self, header: str | None) -> bool:
        if header is None:
            return True
        host = _host_of(header)
        if host is None:
            return False
        if host in self._names:
            return True
        address = _ip(host)
        if address is None:
            return False
        return address.is_loopback or address == self._bound_ip or self.wildcard


def _normalise(host: str) -> str:
    host = host.strip().lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _host_of(header: str) -> str | None:
    """The host part of a ``Host`` header (lower case, no port, no brackets); None if malformed."""
    text = header.strip().lower()
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        host, rest = text[1:end], text[end + 1 :]
        if _ip(host) is None or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return None
        return host
    host, sep, port = text.rpartition(":")
    if not sep:
        host = text
    elif port and not port.isdigit():
        return None
    return host.rstrip(".") or None


class StatusPage:
    """Request head in, response bytes out: the routes of the page, pure but for ``view_source``."""

    def __init__(self, view_source: Callable[[], View], hosts: HostCheck) -> None:
        self._view_source = view_source
        self._hosts = hosts
        self._page: bytes | None = None

    def handle(self, head: bytes) -> bytes:
        """The bytes to send for one complete request head (never raises)."""
        try:
            request = parse_head(head, asterisk=True)
        except BadRequest as refused:
            return refused.response.encode()
        try:
            response = self.respond(request)
        except Exception:  # a bug here must cost one 500, never the server or a stack trace
            logger.exception("status page: error serving %s %s", request.method, request.path)
            response = error(500, "internal error")
        return response.encode(head_only=request.method == "HEAD")

    def respond(self, request: Request) -> Response:
        if not self._hosts.allows(request.header("host")):
            return error(403, "Host header not accepted; use the address the page is bound to, or localhost")
        if request.method not in ALLOWED_METHODS:
            return error(405, "method not allowed; use GET or HEAD", _ALLOW)
        refused = body_error(request)
        if refused is not None:
            return refused
        path = request.path
        if path in ("/", "/index.html"):
            return Response(200, self.page(), "text/html; charset=utf-8")
        if path == "/api/workers":
            view = self._view_source()
            return Response(200, json.dumps(view.workers, separators=(",", ":")).encode())
        if path == "/api/supervisor":
            view = self._view_source()
            return Response(200, json.dumps({"project": view.project, "pid": view.supervisor_pid}).encode())
        if path == "/metrics":
            from ..health.exposition import negotiate

            values = request.query.get("format")
            fmt = negotiate(values[-1] if values else None, request.header("accept"))
            if fmt is None:
                return error(400, "unknown format; use format=prometheus or openmetrics")
            body, content_type = metrics_body(self._view_source(), fmt)
            return Response(200, body, content_type)
        return error(404, "not found; use /, /api/workers, /api/supervisor or /metrics")

    def page(self) -> bytes:
        if self._page is None:
            self._page = PAGE_PATH.read_bytes()
        return self._page


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (IPv4 or IPv6); OSError when it cannot be had."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, socktype, proto, _canon, address = infos[0]
    sock = socket.socket(family, socktype, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(False)
    return sock


class StatusServer:
    """A running status server in one thread of the supervisor; ``close()`` (or ``with``) stops it.

    ``serving``: a running :class:`HttpLoop` to serve on (``procguard up``'s
    one HTTP thread, shared with the health ports it answers); without it
    the page gets a loop and a thread of its own. ``tls``: serve HTTPS only
    (a plain request gets 400 "this port speaks HTTPS"). Raises OSError when
    ``host:port`` cannot be listened on.
    """

    def __init__(
        self,
        view_source: Callable[[], View],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        max_connections: int = MAX_CONNECTIONS,
        request_timeout: float = REQUEST_TIMEOUT_S,
        serving: HttpLoop | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._listener = _listen(host, port)
        self._tls = tls is not None
        self.host = host
        self.port = int(self._listener.getsockname()[1])
        self.page = StatusPage(view_source, HostCheck(host))
        self._shared = serving is not None
        self._thread: threading.Thread | None = None
        if serving is not None:
            self._loop = serving
            serving.add_listener(self._listener, self.page.handle, tls)
            return
        self._loop = HttpLoop(
            self._listener,
            self.page.handle,
            max_connections=max_connections,
            request_timeout=request_timeout,
            name="status page",
            tls=tls,
        )
        self._thread = threading.Thread(target=self._loop.serve, name="procguard-status", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self._tls else 'http'}://{host}:{self.port}/"

    def close(self) -> None:
        if self._shared:
            self._loop.remove_listener(self._listener)  # the loop serves on for the others
            return
        self._loop.stop()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._listener.close()

    def __enter__(self) -> StatusServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
