"""A small HTTP service (the real-stack scenario): answers ``GET /`` on its own port until stopped.

Standard library only, one thread, as a minimal internal API is written. It
binds 127.0.0.1 on ``--port`` (0, the default, lets the kernel choose, so
50 copies never collide) and logs the port it got in its ``ready`` event;
the harness then checks every copy answers.
"""

from __future__ import annotations

import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

import _events as ev


class Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: a request log line per probe would only fill the managers' log files."""


if __name__ == "__main__":
    args = ev.parse_common(sys.argv[1:])
    ev.open_log(args["events"], "worker")
    ev.on_stop_signals()
    server = HTTPServer(("127.0.0.1", int(args.get("port", "0"))), Hello)
    ev.log("ready", name=args.get("name", ""), port=server.server_address[1])
    server.serve_forever()
