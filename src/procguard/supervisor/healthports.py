"""The supervisor's own HTTP thread: the status page and every worker's health port.

Under ``procguard up`` the supervisor binds each worker's ``health_port``
and answers its /health, /ready and /metrics itself: for a ``command =``
worker (spawned directly, no ``procguard run`` in front of it) from its own
facts about it (:mod:`.command_health`), for a ``run =`` worker from the
snapshots the worker publishes into the mapping the supervisor handed it
(:mod:`.function_health`; no responder process beside the worker). One
:class:`~procguard.health.loop.HttpLoop` in one daemon thread serves every
port (the status page's too), with the health servers' request parsing and
limits: at most ``MAX_CONNECTIONS`` connections per loop (the oldest one
still sending its head is dropped for a new one), a request head and its
answer within ``REQUEST_TIMEOUT_S``, 405 for methods other than GET and
HEAD, and the status page's ``Host`` check (a page on another origin that
re-resolves its name to 127.0.0.1 gets 403). The worker's
``health_token_file``, else ``PROCGUARD_HEALTH_TOKEN`` (the worker's ``env``
first, then the supervisor's environment) guards /metrics as it does for
``procguard run``; with ``health_tls_cert``/``health_tls_key`` the port
speaks HTTPS only, as it does for ``procguard run``.

When a port is bound and released (:meth:`HealthPorts.reconcile`):

- bound right before the worker's process is spawned; a port that cannot
  be bound (taken, no permission) fails that start like any failed start
  (one log line naming the port and the worker, then backoff);
- kept open while the worker is meant to run: starting, running, stopping,
  and in backoff between two processes, so a probe reads 503 "not running"
  rather than "connection refused" while the worker restarts;
- released once the worker is stopped or fatal (``procguard stop``,
  ``down``, a restart policy that leaves it stopped, the start limit), and
  when the supervisor exits.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable

from ..health.endpoints import Endpoints, worker_token
from ..health.listen import bind_listener
from ..health.loop import HttpLoop
from ..snapshot import WorkerSnapshot
from .command_health import command_snapshot
from .function_health import function_snapshot
from .states import WorkerState
from .statuspage import HostCheck
from .worker import Worker

logger = logging.getLogger(__name__)

S = WorkerState

#: At most this many connections at once on the supervisor's HTTP loop.
MAX_CONNECTIONS = 256
#: A request head must arrive, and its response be read, within this many seconds.
REQUEST_TIMEOUT_S = 5.0

#: The states in which a worker's health port stays bound.
HELD_STATES = frozenset({S.STARTING, S.RUNNING, S.STOPPING, S.BACKOFF})


class ServingThread:
    """One :class:`HttpLoop` in one daemon thread, started on first use; ports come and go."""

    def __init__(self) -> None:
        self._loop: HttpLoop | None = None
        self._thread: threading.Thread | None = None

    def loop(self) -> HttpLoop:
        if self._loop is None:
            self._loop = HttpLoop(
                None,
                max_connections=MAX_CONNECTIONS,
                request_timeout=REQUEST_TIMEOUT_S,
                name="procguard up's HTTP server",
            )
            self._thread = threading.Thread(target=self._loop.serve, name="procguard-http", daemon=True)
            self._thread.start()
        return self._loop

    def close(self) -> None:
        if self._loop is not None:
            self._loop.stop()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._loop = None
        self._thread = None


class HealthPorts:
    """The health ports the supervisor holds for its workers (used by the event loop only)."""

    def __init__(
        self,
        serving: ServingThread,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._serving = serving
        self._clock = clock
        self._wall = wall_clock
        self._held: dict[str, socket.socket] = {}
        #: Whose answers each held port gives: the copy, or its new generation after a reload's switch.
        self._serving_for: dict[str, Worker] = {}

    def held(self, name: str) -> bool:
        return name in self._held

    def holder(self, port: int) -> str | None:
        """The worker whose health port ``port`` is, if one is held."""
        for name, listener in self._held.items():
            if listener.getsockname()[1] == port:
                return name
        return None

    def open(self, worker: Worker) -> None:
        """Bind ``worker``'s health port if not held yet; UsageError (one line) when it cannot be."""
        if worker.name in self._held or not worker.holds_health_port:
            return
        limits = worker.config.limits
        assert limits.health_port is not None
        tls = None
        if limits.health_tls_cert is not None and limits.health_tls_key is not None:
            from ..health.tls import server_context  # only with TLS

            tls = server_context(limits.health_tls_cert, limits.health_tls_key)
        token = worker_token(limits.health_token_file, {**os.environ, **worker.config.env})
        listener = bind_listener(limits.health_host, limits.health_port)
        listener.set_inheritable(False)
        clock, wall = self._clock, self._wall
        name, serving_for = worker.name, self._serving_for
        serving_for[name] = worker

        def current() -> WorkerSnapshot:
            serving = serving_for.get(name, worker)  # one dict read: safe from the HTTP thread
            snapshot = function_snapshot if serving.publishes_health else command_snapshot
            return snapshot(serving, clock(), wall())

        endpoints = Endpoints(
            current,
            token or None,
            allow_host=HostCheck(limits.health_host).allows,
        )
        self._held[worker.name] = listener
        self._serving.loop().add_listener(listener, endpoints.handle, tls)
        logger.info("%s: health on %s:%s (served by the supervisor)", worker.name, limits.health_host,
                    listener.getsockname()[1])

    def hand_over(self, worker: Worker) -> None:
        """``worker`` (a copy's new generation) answers on the copy's port from now on."""
        if worker.name in self._held:
            self._serving_for[worker.name] = worker

    def reconcile(self, workers: Iterable[Worker]) -> None:
        """Release the ports of workers that are no longer meant to run (stopped, fatal)."""
        if not self._held:
            return
        for worker in workers:
            if worker.name in self._held and worker.state not in HELD_STATES:
                self.close(worker.name)

    def close(self, name: str) -> None:
        listener = self._held.pop(name, None)
        self._serving_for.pop(name, None)
        if listener is not None:
            self._serving.loop().remove_listener(listener)
            logger.debug("%s: health port released", name)

    def close_all(self) -> None:
        for name in list(self._held):
            self.close(name)
