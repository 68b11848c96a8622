"""The responder process: answers HTTP for a worker from its published snapshots.

Why a separate process: a worker whose main thread is CPU-bound holds the
GIL, and any thread of it that serves HTTP waits for the GIL at every
socket call (prometheus_client's ``start_http_server`` answers in ~60 ms
there). This process has its own interpreter, so probes are answered in
about a millisecond whatever the worker does, and the worker pays only for
publishing its snapshot a few times a second.

What it reports when the worker cannot publish (stuck in C code holding the
GIL, stopped, swapping) is :class:`~procguard.health.shared.PublishedView`'s
verdict: once the latest snapshot is older than ``stale_after_s``, /health
and /ready answer 503 with the reason ``"no update from worker for N s"``
rather than leaving the socket silent; times in /metrics are advanced by the
age of the snapshot. Under ``procguard up`` the supervisor answers from the
same view and no responder process is started.

Lifetime: the process exits on SIGTERM (sent by ``HealthServer.close()``),
when its parent dies (parent-death signal when the server was started from
the main thread, and a check of the parent PID every half second in any
case), and ignores SIGINT so that a Ctrl-C in the terminal does not take
the health endpoints down while the worker is still draining.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import os
import signal
import socket
from collections.abc import Mapping
from typing import Any

from .endpoints import Endpoints
from .loop import HttpLoop
from .shared import PublishedView, SnapshotReader, age_snapshot

__all__ = ["PublishedView", "age_snapshot", "main", "set_parent_death_signal"]

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def set_parent_death_signal(signum: int) -> bool:
    """Ask Linux to send ``signum`` to this process when its parent thread exits."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def main(config: Mapping[str, Any]) -> None:
    """Entry point; ``config`` comes from :class:`procguard.health.server.HealthServer`."""
    parent = int(config["parent_pid"])
    if config.get("pdeathsig"):
        set_parent_death_signal(signal.SIGTERM)
    if os.getppid() != parent:
        return  # the worker is already gone
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # exposition (prometheus_client) loads on the first /metrics request: ~5 MB less when nobody scrapes
    listener = socket.socket(fileno=int(config["listen_fd"]))
    buffer = mmap.mmap(int(config["shm_fd"]), int(config["shm_size"]), prot=mmap.PROT_READ)
    view = PublishedView(SnapshotReader(buffer), float(config["stale_after_s"]))
    endpoints = Endpoints(view.current, config.get("token") or None)
    tls = None
    if config.get("tls"):
        from .tls import server_context  # checked by the worker before it started this process

        tls = server_context(*config["tls"])
    loop = HttpLoop(
        listener,
        endpoints.handle,
        max_connections=int(config["max_connections"]),
        request_timeout=float(config["request_timeout_s"]),
        tick=lambda: os.getppid() == parent,
        tls=tls,
    )
    signal.signal(signal.SIGTERM, lambda _signum, _frame: loop.stop())
    try:
        loop.serve()
    finally:
        listener.close()
