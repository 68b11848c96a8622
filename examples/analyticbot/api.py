"""The analyticbot API: channel statistics over HTTP, from its own SQLite file.

A small stdlib HTTP service (no procguard inside; ``procguard run -- python
-m examples.analyticbot.api`` supervises it from outside)::

    GET /health                      {"status": "ok"}
    GET /api/channels                {"channels": [{"id": ..., "title": ...}, ...]}
    GET /api/channels/<id>/stats     {"channel_id", "title", "subscribers", "views", "posts", "as_of"}
    POST /api/jobs {"count": N}      enqueue N jobs -> {"enqueued": N, "queued", "taken", "done", "depth"}
    GET /api/jobs                    {"queued", "taken", "done", "depth"}

Jobs go into ``jobs.sqlite3`` in the data directory (:mod:`.jobs`): they
survive a restart of the API or of the workers that consume them.

The channels live in ``api.sqlite3`` in the data directory, seeded on first
start. Every stats request moves the numbers on a little (the "activity" of
the channel), in one transaction, so the collector sees changing data and the
demo does work that can be checked. Binds 127.0.0.1 unless ``--host`` says
otherwise; SIGTERM/SIGINT stop it after the requests in flight.

Given a listening socket the systemd way (``LISTEN_FDS=1`` and ``LISTEN_PID``
its own pid: ``listen = "HOST:PORT"`` under ``procguard up``, or systemd's
socket activation), it serves on fd 3 instead of binding ``--port``. Several
processes then share one socket: on SIGTERM a process stops accepting, finishes
the requests it took and leaves; connections it did not take wait in the
socket's queue for the others (a blue-green ``procguard reload api``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import socket
import sqlite3
import sys
import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any

from . import settings
from .jobs import JOBS_DB, JobQueue

log = logging.getLogger("analyticbot.api")

#: Most jobs one POST may enqueue, and the largest body it reads.
MAX_JOBS = 100_000
MAX_BODY = 4096

SEED_CHANNELS = [
    ("python-news", "Python News", 12000, 480000, 310),
    ("data-digest", "Data Digest", 8300, 250000, 190),
    ("ops-weekly", "Ops Weekly", 4100, 96000, 75),
    ("ml-papers", "ML Papers", 15600, 720000, 402),
    ("rust-notes", "Rust Notes", 5200, 130000, 120),
]

SCHEMA = """
CREATE TABLE IF NOT EXISTS channels (
    id TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    subscribers INTEGER NOT NULL,
    views INTEGER NOT NULL,
    posts INTEGER NOT NULL,
    updated_at REAL NOT NULL
);
"""


def init_db(path: Path) -> None:
    """Create the channel table and seed it once (idempotent)."""
    conn = settings.connect(path)
    try:
        conn.executescript(SCHEMA)
        conn.execute("BEGIN IMMEDIATE")
        for row in SEED_CHANNELS:
            conn.execute(
                "INSERT OR IGNORE INTO channels VALUES (?, ?, ?, ?, ?, ?)", (*row, time.time())
            )
        conn.execute("COMMIT")
    finally:
        conn.close()


class StatsStore:
    """Reads and advances the channel statistics; one connection per call (thread-safe)."""

    def __init__(self, path: Path, *, rng: random.Random | None = None) -> None:
        self.path = path
        self._rng = rng or random.Random()
        self._rng_lock = threading.Lock()

    def channels(self) -> list[dict[str, Any]]:
        conn = settings.connect(self.path)
        try:
            rows = conn.execute("SELECT id, title FROM channels ORDER BY id").fetchall()
        finally:
            conn.close()
        return [{"id": cid, "title": title} for cid, title in rows]

    def stats(self, channel_id: str) -> dict[str, Any] | None:
        """The channel's numbers after one step of simulated activity, or None if unknown."""
        with self._rng_lock:
            d_subs, d_views, d_posts = (
                self._rng.randint(-2, 9), self._rng.randint(10, 400), self._rng.randint(0, 1)
            )
        conn = settings.connect(self.path)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "UPDATE channels SET subscribers = MAX(0, subscribers + ?), views = views + ?,"
                " posts = posts + ?, updated_at = ? WHERE id = ?",
                (d_subs, d_views, d_posts, time.time(), channel_id),
            )
            row = conn.execute(
                "SELECT id, title, subscribers, views, posts, updated_at FROM channels WHERE id = ?",
                (channel_id,),
            ).fetchone()
            conn.execute("COMMIT")
        except sqlite3.Error:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            conn.close()
        if row is None:
            return None
        keys = ("channel_id", "title", "subscribers", "views", "posts", "as_of")
        return dict(zip(keys, row, strict=True))


class _Handler(BaseHTTPRequestHandler):
    server: _ApiServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        parts = [p for p in path.split("/") if p]
        try:
            if parts == ["health"]:
                self._send(200, {"status": "ok"})
            elif parts == ["api", "jobs"]:
                self._send(200, self._counts())
            elif parts == ["api", "channels"]:
                self._send(200, {"channels": self.server.store.channels()})
            elif len(parts) == 4 and parts[:2] == ["api", "channels"] and parts[3] == "stats":
                stats = self.server.store.stats(parts[2])
                if stats is None:
                    self._send(404, {"error": f"unknown channel {parts[2]!r}"})
                else:
                    self._send(200, stats)
            else:
                self._send(404, {"error": "not found"})
        except sqlite3.Error:
            log.exception("database error serving %s", path)
            self._send(503, {"error": "database unavailable"})

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        if path != "/api/jobs":
            self._send(404, {"error": "not found"})
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}") if 0 <= length <= MAX_BODY else None
            count = body.get("count") if isinstance(body, dict) else None
            if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_JOBS:
                self._send(400, {"error": f'give {{"count": N}} with N from 1 to {MAX_JOBS}'})
                return
        except ValueError:
            self._send(400, {"error": "the body is not JSON"})
            return
        try:
            queue = self.server.jobs
            start = time.time()
            queue.enqueue([f"job-{start:.6f}-{i}" for i in range(count)])
            self._send(200, {"enqueued": count, **self._counts()})
        except sqlite3.Error:
            log.exception("database error enqueueing jobs")
            self._send(503, {"error": "database unavailable"})

    def _counts(self) -> dict[str, int]:
        counts = self.server.jobs.counts()
        return {**counts._asdict(), "depth": counts.depth}

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        if self.server.stopping.is_set():
            self.close_connection = True  # a process on its way out keeps no connection open
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)


class _ApiServer(ThreadingHTTPServer):
    # Requests in flight are finished before the process exits (server_close joins them);
    # an idle keep-alive connection is dropped after `timeout` so that it cannot hold the exit.
    daemon_threads = False
    block_on_close = True

    def __init__(
        self, address: tuple[str, int], store: StatsStore, jobs: JobQueue, sock: socket.socket | None = None
    ) -> None:
        self.store = store
        self.jobs = jobs
        self.stopping = threading.Event()
        super().__init__(address, _Handler, bind_and_activate=sock is None)
        if sock is not None:
            self.socket.close()
            self.socket = sock
            self.server_address = sock.getsockname()[:2]
        # Non-blocking accept: with a socket shared by several processes, another one may take
        # the connection this one was woken for; then accept fails at once instead of waiting.
        self.socket.setblocking(False)


_Handler.timeout = 5.0  # seconds an idle keep-alive connection is kept


def inherited_socket() -> socket.socket | None:
    """The listening socket handed down as fd 3 (``LISTEN_FDS=1`` and ``LISTEN_PID`` = this pid), if any."""
    if os.environ.get("LISTEN_FDS") != "1" or os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)  # not for the children this process may start
    return socket.socket(fileno=3)


def serve(host: str, port: int, db_path: Path, *, sock: socket.socket | None = None) -> _ApiServer:
    """Initialise the database and bind the server (port 0 picks a free one), or serve on ``sock``."""
    init_db(db_path)
    return _ApiServer((host, port), StatsStore(db_path), JobQueue(db_path.parent / JOBS_DB), sock)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="analyticbot-api", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=settings.DEFAULT_API_PORT,
                        help=f"port to listen on, 0 picks one (default: {settings.DEFAULT_API_PORT})")
    parser.add_argument("--data-dir", help=settings.DATA_DIR_HELP)
    parser.add_argument("--fd", type=int, help="serve on this inherited listening socket (circus' "
                        "$(circus.sockets.NAME)); without it, fd 3 when LISTEN_FDS/LISTEN_PID say so")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s api[%(process)d] %(levelname)s %(message)s")

    try:
        inherited = socket.socket(fileno=args.fd) if args.fd is not None else inherited_socket()
        db_path = settings.data_dir(args.data_dir) / settings.API_DB
        server = serve(args.host, args.port, db_path, sock=inherited)
    except OSError as error:
        print(f"analyticbot-api: cannot listen on {args.host}:{args.port}: {error.strerror}", file=sys.stderr)
        return 2
    stopping = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        server.stopping.set()  # answers from now on close their connections
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    thread = threading.Thread(target=server.serve_forever, name="api-http", daemon=True)
    thread.start()
    host, port = str(server.server_address[0]), int(server.server_address[1])
    how = f" (socket handed down as fd {inherited.fileno()})" if inherited is not None else ""
    log.info("listening on http://%s:%d%s (data %s)", host, port, how, server.store.path)
    print(f"api listening on http://{host}:{port}{how}", flush=True)
    while not stopping.wait(1.0):
        pass
    log.info("stopping")
    server.stopping.set()
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
