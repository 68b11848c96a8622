"""``run = "bench.head_to_head.workers.listener:serve"``: a function worker serving HTTP on its ``listen`` socket.

The first call takes fd 3 (``LISTEN_FDS=1``, ``LISTEN_PID`` = this process) and
serves ``GET /`` (200, its pid) from a thread; it writes what it found to
``$FACTS_DIR/listen-<pid>``. While the file ``$NOT_READY`` exists when a
process starts, that process never becomes ready (``set_ready(False)``): a
reload to it must fail and leave the old one serving.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_server: ThreadingHTTPServer | None = None
_not_ready = False


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = str(os.getpid()).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _start() -> None:
    global _server, _not_ready
    facts = {k: os.environ.get(k) for k in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")}
    facts["pid"] = str(os.getpid())
    sock = socket.socket(fileno=3)
    facts["sockname"] = "{}:{}".format(*sock.getsockname()[:2])
    _not_ready = os.path.exists(os.environ.get("NOT_READY", "/nonexistent"))
    facts["not_ready"] = _not_ready
    path = os.path.join(os.environ["FACTS_DIR"], f"listen-{os.getpid()}")
    with open(f"{path}.tmp", "w") as out:
        out.write(json.dumps(facts))
    os.replace(f"{path}.tmp", path)
    server = ThreadingHTTPServer(sock.getsockname()[:2], _Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = sock
    sock.setblocking(False)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _server = server


def serve(manager: Any) -> None:
    if _server is None:
        _start()
    if _not_ready:
        manager.set_ready(False, "told not to be ready")
