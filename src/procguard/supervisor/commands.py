"""What the supervisor does for each control request: ping, status, start, stop, restart, scale, down.

The socket and its framing are :mod:`.control`'s; this module decides what
a request means for the workers and when to answer. A name is a worker of
procguard.toml (every copy of it) or one copy ``X:K``
(:mod:`procguard.copies`). ``start``, ``stop`` and ``restart`` answer once
every copy named has made the transition (a waiter on each, called by
:meth:`.lifecycle.Lifecycle.notify_waiters`; one reply for all, one line
per copy); ``scale`` once the copies it added have started or the ones it
took away have stopped (:mod:`.scale`); ``down`` answers at once and keeps
the connection open until the supervisor is gone
(:meth:`ControlCommands.release_waiters`), which is when ``procguard down``
returns.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from ..copies import parse_address, parse_count
from ..errors import UsageError
from .backoff import Record
from .control import Peer
from .lifecycle import Lifecycle, operator_stop
from .scale import ScaleDown, plan_scale
from .shutdown import StopAll
from .states import WorkerState
from .worker import Worker

S = WorkerState


class Copies(Protocol):
    """What ``scale`` needs from the supervisor that owns the workers."""

    def add_copies(self, group: str, indices: Sequence[int], count: int) -> list[Worker]:
        """Make (not start) copies ``indices`` of ``group``, each told the worker now has ``count``."""

    def remove_copy(self, worker: Worker) -> None:
        """Forget a copy that has no process any more."""

    def port_clash(self, group: str, count: int) -> str | None:
        """The health port ``group`` with ``count`` copies would share with another owner (one line)."""


def _error(message: str, exit_status: int = 2) -> dict[str, Any]:
    return {"ok": False, "exit_status": exit_status, "error": message}


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
        copies: Copies | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._project = project
        self._workers = workers
        self._copies = copies
        self._scaling: set[str] = set()
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
            names = request.get("names") or []
            try:
                if not isinstance(names, list):
                    raise UsageError(f"names: {names!r} is not a list of worker names")
                shown = self.resolve_all(names) if names else list(self._workers.values())
            except UsageError as error:
                peer.send(_error(str(error)))
                return
            peer.send(
                {
                    "ok": True,
                    "pid": os.getpid(),
                    "project": self._project,
                    "workers": [w.status(now) for w in shown],
                }
            )
            return
        if cmd == "down":
            self._stop_all.begin("procguard down")
            peer.send({"ok": True, "pid": os.getpid(), "message": "stopping all workers"}, close=False)
            self._down_peers.append(peer)
            return
        if cmd not in ("start", "stop", "restart", "scale"):
            peer.send(
                _error(f"unknown command {cmd!r} (use ping, status, start, stop, restart, scale or down)")
            )
            return
        name = request.get("name")
        try:
            if not isinstance(name, str):
                raise UsageError(f"unknown worker {name!r} (use one of: {', '.join(self._groups())})")
            workers = self.resolve(name)
        except UsageError as error:
            peer.send(_error(str(error)))
            return
        if self._lifecycle.exiting:
            peer.send(_error("the supervisor is shutting down", 1))
            return
        if cmd == "scale":
            self._scale(name, request.get("count"), peer, now)
            self._publish(now)
            return
        answer = Answer(peer, [w.name for w in workers])
        for worker in workers:
            if cmd == "stop":
                self._stop(worker, answer, now)
            elif cmd == "start":
                self._start(worker, answer, now)
            else:
                self._restart(worker, answer, now)
        self._publish(now)

    # -- names ------------------------------------------------------------------------

    def _groups(self) -> list[str]:
        return list(dict.fromkeys(w.group for w in self._workers.values()))

    def resolve(self, name: str) -> list[Worker]:
        """The copies ``name`` means: every copy of worker ``X``, or copy ``X:K``; UsageError if none."""
        address = parse_address(name)
        copies = [w for w in self._workers.values() if w.group == address.name]
        if not copies:
            raise UsageError(f"unknown worker {name!r} (use one of: {', '.join(self._groups())})")
        if address.copy is None:
            return copies
        chosen = [w for w in copies if w.index == address.copy]
        if not chosen:
            have = ", ".join(w.name for w in copies)
            msg = f"unknown copy {name!r}: worker {address.name} has {len(copies)} (use one of: {have})"
            raise UsageError(msg)
        return chosen

    def resolve_all(self, names: Sequence[object]) -> list[Worker]:
        """The copies several names mean, each once, in the supervisor's order."""
        chosen: set[str] = set()
        for name in names:
            if not isinstance(name, str):
                raise UsageError(f"unknown worker {name!r} (use one of: {', '.join(self._groups())})")
            chosen.update(w.name for w in self.resolve(name))
        return [w for w in self._workers.values() if w.name in chosen]

    # -- one copy -------------------------------------------------------------------------

    def _stop(self, worker: Worker, answer: Answer, now: float) -> None:
        if not worker.state.has_process and worker.state not in (S.BACKOFF, S.FATAL):
            worker.want_start = False
            answer.settle(worker, {"ok": True, "message": f"{worker.name} is already {worker.state}"})
            return
        worker.waiters.append(answer.when("stop"))
        self._lifecycle.request_stop(worker, now, operator_stop("procguard stop"))

    def _start(self, worker: Worker, answer: Answer, now: float) -> None:
        if worker.state.has_process:
            message = f"{worker.name} is already {worker.state}"
            answer.settle(worker, {"ok": True, "message": message, "pid": worker.pid})
            return
        worker.record = Record()  # a start by hand clears FATAL and the start-limit count
        worker.next_start_at = None
        if worker.state is S.BACKOFF:
            worker.set_state(S.STOPPED)
        worker.waiters.append(answer.when("start"))
        self._lifecycle.spawn(worker, now)

    def _restart(self, worker: Worker, answer: Answer, now: float) -> None:
        worker.record = Record()
        if worker.state.has_process:
            worker.waiters.append(answer.when("restart"))
            worker.restart_after_stop = True
            self._lifecycle.request_stop(worker, now, operator_stop("procguard restart"))
            return
        if worker.state is S.BACKOFF:
            worker.set_state(S.STOPPED)
        worker.waiters.append(answer.when("restart"))
        worker.restarts += 1
        self._lifecycle.spawn(worker, now)

    # -- scale ------------------------------------------------------------------------------

    def _scale(self, name: str, count: object, peer: Peer, now: float) -> None:
        copies = self._copies
        try:
            address = parse_address(name)
            if address.copy is not None:
                msg = f"scale takes a worker, not a copy ({name!r}; use {address.name})"
                raise UsageError(msg)
            want = parse_count(count, what="count")
        except UsageError as error:
            peer.send(_error(str(error)))
            return
        if copies is None:
            peer.send(_error("this supervisor cannot scale", 1))
            return
        group = address.name
        if group in self._scaling:
            peer.send(_error(f"a scale of {group} is under way (wait for it to finish)", 1))
            return
        current = [w for w in self._workers.values() if w.group == group]
        have = len(current)
        plan = plan_scale([w.index for w in current], want)
        if not plan.add and not plan.remove:
            peer.send({"ok": True, "message": f"{group} has {have} copies already; nothing to do"})
            return
        if plan.add:
            clash = copies.port_clash(group, want)
            if clash is not None:
                peer.send(_error(f"cannot scale {group} to {want}: {clash}"))
                return
            added = copies.add_copies(group, plan.add, want)
            answer = Answer(peer, [w.name for w in added], header=f"{group}: {have} -> {want} copies")
            for worker in added:
                worker.waiters.append(answer.when("start"))
                worker.want_start = True  # started by the loop once its dependencies run
            return
        self._scaling.add(group)
        leaving = [next(w for w in current if w.index == index) for index in plan.remove]

        def done(stopped: list[str]) -> None:
            self._scaling.discard(group)
            left = have - len(stopped)
            what = f"stopped {', '.join(stopped)}" if stopped else "nothing stopped"
            peer.send({"ok": True, "message": f"{group}: {have} -> {left} copies; {what} (newest first)"})
            self._publish(self._clock())

        ScaleDown(leaving, lifecycle=self._lifecycle, remove=copies.remove_copy, clock=self._clock,
                  done=done).next()


class Answer:
    """One reply to a request about one copy or several: sent once each copy has answered.

    With one copy the reply is that copy's (as it always was); with several,
    ``message`` has one line per copy, ``ok`` is true when all are, and
    ``copies`` holds each copy's own reply.
    """

    def __init__(self, peer: Peer, names: Sequence[str], *, header: str = "") -> None:
        self._peer = peer
        self._names = list(names)
        self._header = header
        self._parts: dict[str, dict[str, Any]] = {}

    def settle(self, worker: Worker, part: dict[str, Any]) -> None:
        self._parts[worker.name] = part
        if len(self._parts) < len(self._names):
            return
        parts = [self._parts[name] for name in self._names]
        if len(parts) == 1 and not self._header:
            self._peer.send(parts[0])
            return
        ok = all(part["ok"] for part in parts)
        lines = ([self._header] if self._header else []) + [part["message"] for part in parts]
        reply: dict[str, Any] = {"ok": ok, "message": "\n".join(lines), "copies": parts}
        if not ok:
            failed = [part["message"] for part in parts if not part["ok"]]
            reply.update(error="; ".join(failed), exit_status=1)
        self._peer.send(reply)

    def when(self, cmd: str) -> Callable[[Worker], None]:
        """A waiter for one copy: its part once it has stopped (``stop``) or has a process (else)."""

        def reply(worker: Worker) -> None:
            running = worker.state.has_process
            ok = not running if cmd == "stop" else running
            message = f"{worker.name} is {worker.state}" + (f" (pid {worker.pid})" if worker.pid else "")
            if not ok and worker.last_exit:
                message += f"; last exit: {worker.last_exit['reason']}"
            self.settle(
                worker,
                {
                    "ok": ok,
                    "message": message,
                    "pid": worker.pid,
                    "state": worker.state.value,
                    **({} if ok else {"error": message, "exit_status": 1}),
                },
            )

        return reply
