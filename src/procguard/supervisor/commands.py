"""What the supervisor does for each control request: ping, status, start, stop, restart, down.

The socket and its framing are :mod:`.control`'s; this module decides what
a request means for the workers and when to answer. ``start``, ``stop`` and
``restart`` answer once the worker has made the transition (a waiter on the
worker, called by :meth:`.lifecycle.Lifecycle.notify_waiters`); ``down``
answers at once and keeps the connection open until the supervisor is gone
(:meth:`ControlCommands.release_waiters`), which is when ``procguard down``
returns.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from .backoff import Record
from .control import Peer
from .lifecycle import Lifecycle, operator_stop
from .shutdown import StopAll
from .states import WorkerState
from .worker import Worker

S = WorkerState


class ControlCommands:
    """The request handler :class:`.control.ControlServer` calls, one request at a time, in the loop."""

    def __init__(
        self,
        *,
        project: str,
        workers: Mapping[str, Worker],
        lifecycle: Lifecycle,
        stop_all: StopAll,
        publish: Callable[[float], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._project = project
        self._workers = workers
        self._lifecycle = lifecycle
        self._stop_all = stop_all
        self._publish = publish
        self._clock = clock
        self._down_peers: list[Peer] = []

    def release_waiters(self) -> None:
        """Close the connections of ``procguard down`` clients: they return now."""
        peers, self._down_peers = self._down_peers, []
        for peer in peers:
            peer.close()

    def handle(self, request: dict[str, Any], peer: Peer) -> None:
        cmd = request.get("cmd")
        now = self._clock()
        if cmd == "ping":
            peer.send({"ok": True, "pid": os.getpid(), "project": self._project})
            return
        if cmd == "status":
            peer.send(
                {
                    "ok": True,
                    "pid": os.getpid(),
                    "project": self._project,
                    "workers": [w.status(now) for w in self._workers.values()],
                }
            )
            return
        if cmd == "down":
            self._stop_all.begin("procguard down")
            peer.send({"ok": True, "pid": os.getpid(), "message": "stopping all workers"}, close=False)
            self._down_peers.append(peer)
            return
        if cmd not in ("start", "stop", "restart"):
            peer.send(
                {
                    "ok": False,
                    "exit_status": 2,
                    "error": f"unknown command {cmd!r} (use ping, status, start, stop, restart or down)",
                }
            )
            return
        name = request.get("name")
        worker = self._workers.get(name) if isinstance(name, str) else None
        if worker is None:
            peer.send(
                {
                    "ok": False,
                    "exit_status": 2,
                    "error": f"unknown worker {name!r} (use one of: {', '.join(self._workers)})",
                }
            )
            return
        if self._lifecycle.exiting:
            peer.send({"ok": False, "exit_status": 1, "error": "the supervisor is shutting down"})
            return
        if cmd == "stop":
            self._stop(worker, peer, now)
        elif cmd == "start":
            self._start(worker, peer, now)
        else:
            self._restart(worker, peer, now)
        self._publish(now)

    def _stop(self, worker: Worker, peer: Peer, now: float) -> None:
        if not worker.state.has_process and worker.state not in (S.BACKOFF, S.FATAL):
            worker.want_start = False
            peer.send({"ok": True, "message": f"{worker.name} is already {worker.state}"})
            return
        worker.waiters.append(reply_when(peer, "stop"))
        self._lifecycle.request_stop(worker, now, operator_stop("procguard stop"))

    def _start(self, worker: Worker, peer: Peer, now: float) -> None:
        if worker.state.has_process:
            peer.send({"ok": True, "message": f"{worker.name} is already {worker.state}", "pid": worker.pid})
            return
        worker.record = Record()  # a start by hand clears FATAL and the start-limit count
        worker.next_start_at = None
        if worker.state is S.BACKOFF:
            worker.set_state(S.STOPPED)
        worker.waiters.append(reply_when(peer, "start"))
        self._lifecycle.spawn(worker, now)

    def _restart(self, worker: Worker, peer: Peer, now: float) -> None:
        worker.record = Record()
        if worker.state.has_process:
            worker.waiters.append(reply_when(peer, "restart"))
            worker.restart_after_stop = True
            self._lifecycle.request_stop(worker, now, operator_stop("procguard restart"))
            return
        if worker.state is S.BACKOFF:
            worker.set_state(S.STOPPED)
        worker.waiters.append(reply_when(peer, "restart"))
        worker.restarts += 1
        self._lifecycle.spawn(worker, now)


def reply_when(peer: Peer, cmd: str) -> Callable[[Worker], None]:
    """A waiter that answers ``peer`` once the worker has stopped (``stop``) or has a process (else)."""

    def reply(worker: Worker) -> None:
        ok = (cmd == "stop" and not worker.state.has_process) or (cmd != "stop" and worker.state.has_process)
        message = f"{worker.name} is {worker.state}" + (f" (pid {worker.pid})" if worker.pid else "")
        if not ok and worker.last_exit:
            message += f"; last exit: {worker.last_exit['reason']}"
        peer.send(
            {
                "ok": ok,
                "message": message,
                "pid": worker.pid,
                "state": worker.state.value,
                **({} if ok else {"error": message, "exit_status": 1}),
            }
        )

    return reply
