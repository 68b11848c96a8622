"""Serve /health, /ready and /metrics for a worker: :func:`serve_health`.

Three ways to serve, same endpoints (see :mod:`procguard.health.endpoints`):

``mode="process"`` (default on Linux)
    A small responder process answers HTTP from snapshots that a daemon
    thread of the worker publishes into shared memory every
    ``publish_interval_s`` (and at once on :meth:`HealthServer.refresh`).
    Probes do not wait for the worker's GIL, so they are answered in about
    a millisecond even while the worker's main thread is CPU-bound, and a
    worker that cannot publish at all (stuck in C code holding the GIL)
    reads as unhealthy after ``stale_after_s`` instead of timing out. The
    responder dies with the worker and is restarted if it dies alone.
``mode="thread"``
    The same non-blocking server loop in one daemon thread of the worker,
    calling ``source()`` per request. No extra process, but each answer
    waits for the GIL (tens of ms under a CPU-bound main thread).
``mode="published"``
    Someone else holds the port and answers HTTP: ``procguard up`` binds a
    function worker's health port itself and answers from snapshots the
    worker publishes into a mapping the supervisor created and handed down
    (``shared_fd``). Here only the publishing daemon thread runs, as in
    process mode: no responder process, no socket. The manager picks this
    mode when its link to the supervisor carries such a mapping.

In the first two modes the listening socket is bound here, before
``start()`` returns, so ``.port`` is known at once and a port in use is a
:class:`~procguard.errors.UsageError` naming the port.

Example::

    with serve_health(manager.snapshot, port=9091) as server:
        print(server.url)          # http://127.0.0.1:9091
        ...
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from types import TracebackType
from typing import Any, Literal

from ..errors import UsageError
from ..snapshot import SnapshotSource
from .endpoints import TOKEN_ENV
from .listen import bind_listener, listener_url
from .shared import (
    DEFAULT_SIZE,
    PUBLISH_INTERVAL_S,
    STALE_AFTER_S,
    SnapshotPublisher,
    create_buffer,
    encode_snapshot,
)

logger = logging.getLogger(__name__)

ServeMode = Literal["process", "thread", "published"]
_MODES = ("process", "thread", "published")

#: Environment variables the responder process keeps; nothing else of the
#: worker's environment (which may hold secrets) is passed on.
_KEPT_ENV = (
    "PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "LD_LIBRARY_PATH",
    "PROCGUARD_INSTANCE", "COVERAGE_PROCESS_START",
)
#: A responder that dies this soon after its start this many times in a row
#: will not start at all here (broken interpreter, missing library): serve
#: from a thread instead.
_QUICK_DEATH_S = 2.0
_QUICK_DEATHS = 3

_BOOTSTRAP = (
    "import sys, json; config = json.loads(sys.stdin.readline()); sys.path[:0] = config['path']; "
    "from procguard.health.responder import main; main(config)"
)


def _default_mode() -> ServeMode:
    return "process" if sys.platform.startswith("linux") and hasattr(os, "memfd_create") else "thread"


class HealthServer:
    """The HTTP face of one worker; see the module docstring for the two modes.

    ``source`` is a cheap, thread-safe callable returning a fresh
    :class:`~procguard.snapshot.WorkerSnapshot`. ``token=None`` reads
    ``PROCGUARD_HEALTH_TOKEN`` (empty or unset: /metrics is open); ``token=""``
    disables the token whatever the environment says. The token is passed to
    the responder through a pipe, never through its arguments or environment.
    ``shared_fd``/``shared_size`` (published mode only): the mapping to
    publish into; the server owns the descriptor from then on and closes it.
    ``listener``: a socket the caller already bound and listens on (served
    instead of binding ``host:port``; the server closes it).
    ``tls_cert``/``tls_key``: PEM files; the port then speaks HTTPS only (a
    plain HTTP request gets 400 "this port speaks HTTPS"). Both files are
    checked by :meth:`start` before anything is served (one-line
    :class:`~procguard.errors.UsageError`); the responder loads them itself.
    """

    def __init__(
        self,
        source: SnapshotSource,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        mode: ServeMode | None = None,
        publish_interval_s: float = PUBLISH_INTERVAL_S,
        stale_after_s: float = STALE_AFTER_S,
        max_connections: int = 256,
        request_timeout_s: float = 5.0,
        shared_fd: int | None = None,
        shared_size: int = DEFAULT_SIZE,
        listener: socket.socket | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
    ) -> None:
        if mode not in (None, *_MODES):
            msg = f"health server mode {mode!r} is not known (use 'process' or 'thread')"
            raise UsageError(msg)
        if (mode == "published") != (shared_fd is not None):
            msg = "health server: mode 'published' goes with shared_fd (the mapping to publish into)"
            raise UsageError(msg)
        if (tls_cert is None) != (tls_key is None):
            msg = "health server: tls_cert and tls_key go together (give both, or neither for plain HTTP)"
            raise UsageError(msg)
        self._tls_files = (tls_cert, tls_key) if tls_cert is not None and tls_key is not None else None
        self._tls: Any = None  # the checked ssl.SSLContext (thread mode serves with it)
        self._source = source
        self._host = host
        self._requested_port = port
        self._token = os.environ.get(TOKEN_ENV, "") if token is None else token
        self.mode: ServeMode = mode or _default_mode()
        self._publish_interval_s = publish_interval_s
        self._stale_after_s = stale_after_s
        self._max_connections = max_connections
        self._request_timeout_s = request_timeout_s
        self._listener: socket.socket | None = None
        # Bound by the caller (a command runner binds before it starts the command); ``port`` unused then.
        self._given_listener = listener
        self._port = 0
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        # thread mode
        self._loop: Any = None
        # process mode
        self._shm_fd = -1 if shared_fd is None else shared_fd
        self._shm_size = shared_size
        self._shm: mmap.mmap | None = None
        self._publisher: SnapshotPublisher | None = None
        self._child: subprocess.Popen[bytes] | None = None
        self._wake = threading.Event()
        self._last_spawn = 0.0
        self._quick_deaths = 0
        self._owner_pid = os.getpid()

    # -- public API ------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port (the kernel's pick when asked for 0); published mode: the port served for us."""
        return self._port

    @property
    def host(self) -> str:
        return self._host

    @property
    def url(self) -> str:
        return listener_url(self._host, self._port, tls=self._tls_files is not None)

    @property
    def responder_pid(self) -> int | None:
        """PID of the responder process (process mode), for operators and tests."""
        child = self._child
        return None if child is None else child.pid

    def start(self) -> HealthServer:
        """Bind and start serving; returns self. Raises UsageError when the port is taken."""
        if self._listener is not None or self._publisher is not None:
            return self
        if self.mode == "published":
            try:
                self._start_published()
            except BaseException:
                self.close()
                raise
            logger.info("health on %s served by the supervisor (pid %d publishes)", self.url, os.getpid())
            return self
        if self._tls_files is not None:
            from .tls import server_context  # only with TLS: ssl stays out of a plain server

            self._tls = server_context(*self._tls_files)  # a bad file is one line before any socket
        listener = self._given_listener or bind_listener(self._host, self._requested_port)
        self._listener = listener
        self._port = int(listener.getsockname()[1])
        self._owner_pid = os.getpid()
        try:
            if self.mode == "process":
                try:
                    self._start_process()
                except OSError as exc:  # no interpreter to start, no memfd, fd limits...
                    logger.warning("health responder process unavailable (%s); serving from a thread", exc)
                    self._release_shared_memory()
                    self.mode = "thread"
            if self.mode == "thread":
                self._start_thread()
        except BaseException:
            self.close()
            raise
        logger.info("health server on %s (%s mode, pid %d)", self.url, self.mode, os.getpid())
        return self

    def refresh(self) -> None:
        """Publish a fresh snapshot now (process and published modes); a no-op in thread mode.

        Call it right after a change probes must see at once, e.g. when the
        worker starts draining, so /ready turns 503 before the worker exits.
        Not from a signal handler (it takes a lock and calls ``source``).
        """
        if self._publisher is not None and not self._closed.is_set():
            self._publish()

    def close(self) -> None:
        """Stop serving and release the port (published mode: stop publishing); idempotent."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._wake.set()
        if self._loop is not None:
            self._loop.stop()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._stop_child()
        if self._listener is not None:
            self._listener.close()
        self._release_shared_memory()

    def _release_shared_memory(self) -> None:
        with self._lock:
            if self._shm is not None:
                self._shm.close()
                self._shm = None
            self._publisher = None
            if self._shm_fd >= 0:
                os.close(self._shm_fd)
                self._shm_fd = -1

    def __enter__(self) -> HealthServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- thread mode -----------------------------------------------------------

    def _start_thread(self) -> None:
        from .endpoints import Endpoints
        from .loop import HttpLoop

        assert self._listener is not None
        endpoints = Endpoints(self._source, self._token or None)
        self._loop = HttpLoop(
            self._listener,
            endpoints.handle,
            max_connections=self._max_connections,
            request_timeout=self._request_timeout_s,
            tls=self._tls,
        )
        self._thread = threading.Thread(target=self._loop.serve, name="procguard-health", daemon=True)
        self._thread.start()

    # -- process and published modes ----------------------------------------------

    def _start_process(self) -> None:
        self._shm_fd, self._shm = create_buffer(DEFAULT_SIZE)
        self._publisher = SnapshotPublisher(self._shm)
        self._publish()  # the responder never starts without a snapshot
        self._spawn()
        self._start_publisher()

    def _start_published(self) -> None:
        self._port = self._requested_port
        self._shm = mmap.mmap(self._shm_fd, self._shm_size)
        self._publisher = SnapshotPublisher(self._shm)
        self._publish()
        self._start_publisher()

    def _start_publisher(self) -> None:
        self._thread = threading.Thread(
            target=self._publish_loop, name="procguard-health-publisher", daemon=True
        )
        self._thread.start()

    def _publish(self) -> None:
        # Snapshot taken under the lock: a periodic publish can never overwrite
        # a newer one from refresh() with an older state (e.g. "ready" after "draining").
        with self._lock:
            if self._publisher is None:
                return
            payload = encode_snapshot(self._source())
            if not self._publisher.publish(payload):
                logger.warning("health snapshot of %d bytes does not fit; not published", len(payload))

    def _publish_loop(self) -> None:
        failures = 0
        while not self._closed.is_set():
            self._wake.wait(self._publish_interval_s)
            if self._closed.is_set():
                return
            try:
                self._publish()
                failures = 0
            except Exception:
                failures += 1
                if failures == 1:  # logged once per run of failures; stale_after_s reports it
                    logger.exception("health snapshot source failed; probes turn unhealthy when stale")
            if not self._check_child():
                return

    def _spawn(self) -> None:
        assert self._listener is not None
        listen_fd = self._listener.fileno()
        config = {
            "path": sys.path,
            "parent_pid": os.getpid(),
            "pdeathsig": threading.current_thread() is threading.main_thread(),
            "listen_fd": listen_fd,
            "shm_fd": self._shm_fd,
            "shm_size": self._shm_size,
            "token": self._token,
            "stale_after_s": self._stale_after_s,
            "max_connections": self._max_connections,
            "request_timeout_s": self._request_timeout_s,
            "tls": list(self._tls_files) if self._tls_files is not None else None,
        }
        env = {key: os.environ[key] for key in _KEPT_ENV if key in os.environ}
        self._last_spawn = time.monotonic()
        child = subprocess.Popen(
            [sys.executable, "-I", "-c", _BOOTSTRAP],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            pass_fds=(listen_fd, self._shm_fd),
            start_new_session=True,  # a terminal's Ctrl-C or a killpg must not end probes mid-drain
            env=env,
        )
        assert child.stdin is not None
        try:
            child.stdin.write(json.dumps(config).encode() + b"\n")
            child.stdin.close()
        except OSError:
            pass  # it died at once; _check_child restarts it
        self._child = child
        logger.debug("health responder started (pid %d)", child.pid)

    def _check_child(self) -> bool:
        """Restart a dead responder; False once serving moved to a thread (stop publishing)."""
        child = self._child
        if child is None or child.poll() is None or self._closed.is_set():
            return True
        lived = time.monotonic() - self._last_spawn
        if lived < 1.0:
            return True  # at most one restart a second
        self._quick_deaths = self._quick_deaths + 1 if lived < _QUICK_DEATH_S + 1.0 else 0
        if self._quick_deaths >= _QUICK_DEATHS:
            logger.error(
                "health responder keeps exiting at once (status %s); serving from a thread instead",
                child.returncode,
            )
            self._child = None
            self.mode = "thread"
            self._start_thread()
            return False
        logger.warning(
            "health responder (pid %d) exited with status %s; restarting it", child.pid, child.returncode
        )
        try:
            self._spawn()
        except OSError as exc:
            logger.error("cannot restart the health responder: %s", exc)
        return True

    def _stop_child(self) -> None:
        child = self._child
        if child is None:
            return
        if os.getpid() != self._owner_pid:
            self._child = None  # a forked copy of the worker: the responder is not ours to stop
            return
        if child.poll() is None:
            try:
                child.send_signal(signal.SIGTERM)
                child.wait(timeout=2)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(timeout=2)
            except OSError:
                pass
        self._child = None


def serve_health(
    source: SnapshotSource,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    token: str | None = None,
    **options: Any,
) -> HealthServer:
    """Start serving /health, /ready and /metrics for ``source``; returns the running server.

    ``port=0`` picks a free port (read it back from ``.port``). ``options``
    are the keyword arguments of :class:`HealthServer` (``mode``,
    ``publish_interval_s``, ``stale_after_s``, ...). Call ``.close()`` (or
    use it as a context manager) to stop.
    """
    return HealthServer(source, host=host, port=port, token=token, **options).start()
