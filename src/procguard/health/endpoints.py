"""What each path answers: /health, /ready and /metrics over a snapshot source.

Pure request -> response logic shared by both ways of serving (a thread in
the worker, or the responder process reading published snapshots). Bodies
never contain anything but the snapshot's own fields: no environment, no
command line, no exception text.

Response bodies:

- ``/health``: ``{"status": "ok", "reason": "healthy"}`` with 200, or
  ``{"status": "unhealthy", "reason": "<why>"}`` with 503.
- ``/ready``: ``{"status": "ready", "reason": ...}`` with 200, or
  ``{"status": "not_ready", "reason": "<why>"}`` with 503.
- ``/metrics``: see :mod:`procguard.health.exposition`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping

from ..snapshot import HealthStatus, WorkerSnapshot
from .protocol import BadRequest, Request, Response, body_error, error, parse_head

logger = logging.getLogger(__name__)

#: The environment variable holding the bearer token /metrics requires (empty or unset: open).
TOKEN_ENV = "PROCGUARD_HEALTH_TOKEN"

ALLOWED_METHODS = ("GET", "HEAD")
PATHS = ("/health", "/ready", "/metrics")



def worker_token(token_file: str | None, env: Mapping[str, str]) -> str:
    """A worker's bearer token: the file of ``health_token_file`` when set, else ``PROCGUARD_HEALTH_TOKEN``.

    "" means /metrics is open. A token file that cannot be read, or is empty,
    is a one-line :class:`~procguard.errors.UsageError`.
    """
    if token_file is not None:
        from .tls import read_token_file  # only with a token file

        return read_token_file(token_file)
    return env.get(TOKEN_ENV, "")


_ALLOW = (("Allow", ", ".join(ALLOWED_METHODS)),)
_CHALLENGE = (("WWW-Authenticate", 'Bearer realm="procguard metrics"'),)


def status_body(status: HealthStatus, ok_word: str, bad_word: str) -> bytes:
    word = ok_word if status.is_healthy else bad_word
    return json.dumps({"status": word, "reason": status.reason}, separators=(",", ":")).encode()


class Endpoints:
    """Turns a parsed :class:`Request` into a :class:`Response`.

    ``snapshot`` is called once per request that needs it; ``token`` (when
    not empty) is required as ``Authorization: Bearer <token>`` on /metrics
    only, compared in constant time. ``allow_host`` (when given) decides
    which ``Host`` headers are answered; others get 403 (the DNS-rebinding
    guard of the ports ``procguard up`` serves itself).
    """

    def __init__(
        self,
        snapshot: Callable[[], WorkerSnapshot],
        token: str | None = None,
        *,
        allow_host: Callable[[str | None], bool] | None = None,
    ) -> None:
        self._snapshot = snapshot
        self._token = token.encode() if token else None
        self._allow_host = allow_host
        self._last_failure_log = 0.0

    def handle(self, head: bytes) -> bytes:
        """The bytes to send for a complete request head (never raises)."""
        try:
            request = parse_head(head)
        except BadRequest as refused:
            return refused.response.encode()
        try:
            response = self.respond(request)
        except Exception:  # a bug here must cost one 500, never the server
            logger.exception("health endpoint failed on %s %s", request.method, request.path)
            response = error(500, "internal error")
        return response.encode(head_only=request.method == "HEAD")

    def respond(self, request: Request) -> Response:
        if self._allow_host is not None and not self._allow_host(request.header("host")):
            return error(403, "Host header not accepted; use the address the port is bound to, or localhost")
        if request.path not in PATHS:
            return error(404, "not found; try /health, /ready or /metrics")
        if request.method not in ALLOWED_METHODS:
            return error(405, "method not allowed; use GET or HEAD", _ALLOW)
        refused = body_error(request)
        if refused is not None:
            return refused
        if request.path == "/metrics" and not self._authorized(request):
            return error(401, "missing or wrong bearer token", _CHALLENGE)
        fmt = "json"
        if request.path == "/metrics":
            from .exposition import negotiate

            values = request.query.get("format")
            found = negotiate(values[-1] if values else None, request.header("accept"))
            if found is None:
                return error(400, "unknown format; use format=json, prometheus or openmetrics")
            fmt = found
        try:
            snap = self._snapshot()
        except Exception:
            self._log_failure()
            if request.path == "/metrics":
                return error(500, "snapshot unavailable")
            status = HealthStatus(False, "snapshot unavailable")
            word = "unhealthy" if request.path == "/health" else "not_ready"
            return Response(503, status_body(status, "ok", word))
        if request.path == "/health":
            code = 200 if snap.health.is_healthy else 503
            return Response(code, status_body(snap.health, "ok", "unhealthy"))
        if request.path == "/ready":
            code = 200 if snap.ready.is_healthy else 503
            return Response(code, status_body(snap.ready, "ready", "not_ready"))
        return self._metrics(snap, fmt)

    def _metrics(self, snap: WorkerSnapshot, fmt: str) -> Response:
        from .exposition import render_json, render_prometheus

        if fmt == "json":
            return Response(200, render_json(snap))
        body, content_type = render_prometheus([snap], openmetrics=fmt == "openmetrics")
        return Response(200, body, content_type)

    def _authorized(self, request: Request) -> bool:
        if self._token is None:
            return True
        import hmac  # only with a token: hmac loads hashlib and OpenSSL (~3.5 MB) in every server

        header = request.header("authorization") or ""
        scheme, _, credentials = header.strip().partition(" ")
        given = credentials.strip().encode("latin-1") if scheme.lower() == "bearer" else b""
        # compare_digest on both branches: the time taken does not tell what was wrong.
        return hmac.compare_digest(given, self._token)

    def _log_failure(self) -> None:
        now = time.monotonic()
        if now - self._last_failure_log >= 60.0:  # at most once a minute
            self._last_failure_log = now
            logger.exception("health snapshot source failed")
