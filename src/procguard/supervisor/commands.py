"""What the supervisor does for each control request: ping, status, start, stop, restart, signal,
scale, reload, down.

The socket and its framing are :mod:`.control`'s; this module decides what
a request means for the workers and when to answer. A request names its
workers with the words of :mod:`.selection` (``all``, names, shell
patterns, one copy ``X:K``; a worker's name means every copy of it),
resolved here against the workers the supervisor runs now; a word that
selects nothing fails the whole request (exit status 2) before anything is
done. ``start``, ``stop`` and ``restart`` answer once every named worker
has made the transition, one line each (:mod:`.bulk`: a waiter on each
worker, called by :meth:`.lifecycle.Lifecycle.notify_waiters`); ``signal``
answers at once; ``scale`` once the copies it added have started or the
ones it took away have stopped (:mod:`.scale`); ``reload`` re-reads
procguard.toml (:mod:`.reload`); ``down`` answers at once and keeps the
connection open until the supervisor is gone
(:meth:`ControlCommands.release_waiters`), which is when ``procguard down``
returns.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from ..copies import parse_address, parse_count
from ..errors import ProcguardError, UsageError
from ..reasons import signal_name
from .backoff import Record
from .bluegreen import BlueGreen
from .bulk import Batch, OrderedStop, started_line, stopped_line
from .control import Peer
from .lifecycle import Lifecycle, operator_stop
from .scale import ScaleDown, plan_scale
from .selection import ACCEPTED, select
from .shutdown import StopAll
from .states import WorkerState
from .worker import Worker

logger = logging.getLogger(__name__)

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


def _lines(message: str) -> dict[str, Any]:
    """A successful answer of one line, in the form of :class:`.bulk.Batch`'s answers."""
    return {"ok": True, "lines": [{"ok": True, "message": message}]}


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
        reloader: Callable[[Peer], None] = lambda peer: None,
        copies: Copies | None = None,
        bluegreen: BlueGreen | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._project = project
        self._bluegreen = bluegreen
        self._workers = workers
        self._copies = copies
        self._scaling: set[str] = set()
        self._lifecycle = lifecycle
        self._stop_all = stop_all
        self._publish = publish
        self._reloader = reloader
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
        if cmd not in COMMANDS:
            accepted = ", ".join(["ping", "status", "down", *COMMANDS])
            peer.send({"ok": False, "exit_status": 2, "error": f"unknown command {cmd!r} (use {accepted})"})
            return
        if self._lifecycle.exiting:
            peer.send(_error("the supervisor is shutting down", 1))
            return
        if cmd == "reload" and not request.get("names"):
            self._reload(peer)
            self._publish(now)
            return
        if cmd == "scale":
            self._scale(request.get("name"), request.get("count"), peer)
            self._publish(now)
            return
        try:
            workers = self._select(request)
            signum = _signal_number(request.get("signal")) if cmd == "signal" else 0
        except UsageError as error:
            peer.send({"ok": False, "exit_status": 2, "error": str(error)})
            return
        if cmd == "stop":
            self._stop(workers, peer)
        elif cmd == "start":
            self._start(workers, peer)
        elif cmd == "restart":
            self._restart(workers, peer)
        elif cmd == "reload":
            self._reload_copies(workers, peer)
        else:
            self._signal(workers, signum, peer)
        self._publish(now)

    def _select(self, request: dict[str, Any]) -> list[Worker]:
        """The workers a request names (``names``: words of :mod:`.selection`; ``name``: one)."""
        words = request.get("names", [request.get("name")])
        if not isinstance(words, list) or not words or not all(isinstance(w, str) for w in words):
            raise UsageError(f"no worker named (use {ACCEPTED})")
        return self.resolve_all(words)

    def resolve_all(self, words: list[str]) -> list[Worker]:
        """The copies ``words`` select (:func:`.selection.select`), in the supervisor's order."""
        live = [w for w in self._workers.values() if not w.retiring]
        names = select(words, [w.name for w in live], {w.name: (w.group, w.index) for w in live})
        return [self._workers[name] for name in names]

    def _stop(self, workers: list[Worker], peer: Peer) -> None:
        batch = Batch(peer, [w.name for w in workers])
        asked = []
        for worker in workers:
            if not worker.state.has_process and worker.state not in (S.BACKOFF, S.FATAL):
                worker.want_start = False
                batch.done(worker.name, True, f"{worker.name} is already {worker.state}")
            else:
                asked.append(worker)
        stop = OrderedStop(
            asked,
            self._lifecycle,
            operator_stop("procguard stop"),
            clock=self._clock,
            on_stopped=lambda worker: batch.done(worker.name, *stopped_line(worker)),
        )
        stop.begin()
        batch.send_if_complete()

    def _start(self, workers: list[Worker], peer: Peer) -> None:
        batch = Batch(peer, [w.name for w in workers])
        for worker in workers:
            if worker.state.has_process:
                batch.done(worker.name, True, f"{worker.name} is already {worker.state}")
                continue
            self._start_one(worker, batch)
        batch.send_if_complete()

    def _start_one(self, worker: Worker, batch: Batch, *, restart: bool = False) -> None:
        """Start ``worker`` once what it depends on runs (the loop spawns it in dependency order)."""
        worker.record = Record()  # a start by hand clears FATAL and the start-limit count
        worker.next_start_at = None
        if worker.state is S.BACKOFF:
            worker.set_state(S.STOPPED)
        if restart:
            worker.restarts += 1
        worker.waiters.append(batch.waiter(worker.name, started_line))
        worker.want_start = True

    def _restart(self, workers: list[Worker], peer: Peer) -> None:
        """Stop them all (reverse dependency order), then start them all (dependency order)."""
        batch = Batch(peer, [w.name for w in workers])

        def start_all() -> None:
            if self._lifecycle.exiting:
                for worker in workers:
                    batch.done(worker.name, False, f"{worker.name}: the supervisor is shutting down")
                return
            for worker in workers:
                self._start_one(worker, batch, restart=True)

        for worker in workers:
            worker.record = Record()
        OrderedStop(
            [w for w in workers if w.state.has_process or w.state in (S.BACKOFF, S.FATAL)],
            self._lifecycle,
            operator_stop("procguard restart"),
            clock=self._clock,
            finished=start_all,
        ).begin()

    def _signal(self, workers: list[Worker], signum: int, peer: Peer) -> None:
        """Send ``signum`` to each worker's main process (not its group); a worker not running fails."""
        name = signal_name(signum)
        batch = Batch(peer, [w.name for w in workers])
        for worker in workers:
            if worker.state.has_process and worker.pid is not None:
                self._lifecycle.send_signal(worker, signum)
                batch.done(worker.name, True, f"{worker.name}: {name} sent to pid {worker.pid}")
            else:
                batch.done(worker.name, False, f"{worker.name} is {worker.state}: not signalled")

    def _reload_copies(self, workers: list[Worker], peer: Peer) -> None:
        """``procguard reload NAME...``: a blue-green reload of each copy (:mod:`.bluegreen`), at once.

        A copy that is not running has nothing to hand over: its line says so
        and the command exits 1 (``start`` is what starts it).
        """
        batch = Batch(peer, [w.name for w in workers])
        bluegreen = self._bluegreen
        for worker in workers:
            if bluegreen is None:
                batch.done(worker.name, False, f"{worker.name}: this supervisor cannot reload a worker")
            elif not bluegreen.can_replace(worker):
                batch.done(worker.name, False, f"{worker.name} is {worker.state}: not reloaded"
                           f" (use 'procguard start {worker.name}')")
            else:
                config = worker.pending_config or worker.config
                bluegreen.begin(worker, config, functools.partial(batch.done, worker.name))
        batch.send_if_complete()

    def _reload(self, peer: Peer) -> None:
        try:
            self._reloader(peer)
        except ProcguardError as error:
            peer.send({"ok": False, "exit_status": int(error.exit_status), "error": str(error)})
        except OSError as error:  # a new worker's log could not be opened: said, and the loop goes on
            logger.error("reload: %s", error)
            peer.send({"ok": False, "exit_status": 1, "error": f"reload failed: {error}"})

    def _scale(self, name: object, count: object, peer: Peer) -> None:
        try:
            if not isinstance(name, str):
                raise UsageError(f"scale takes a worker name, not {name!r}")
            address = parse_address(name)
            if address.copy is not None:
                msg = f"scale takes a worker, not a copy ({name!r}; use {address.name})"
                raise UsageError(msg)
            group = address.name
            if not self.copies_of(group):
                groups = ", ".join(dict.fromkeys(w.group for w in self._workers.values()))
                raise UsageError(f"unknown worker {name!r} (use one of: {groups})")
            want = parse_count(count, what="count")
        except UsageError as error:
            peer.send(_error(str(error)))
            return
        refused = self.scale_group(group, want, peer)
        if refused is not None:
            peer.send(_error(*refused))

    def scale_group(
        self, group: str, want: int, peer: Peer | None, *, by: str = "procguard scale",
        done: Callable[[int, int], None] | None = None,
    ) -> tuple[str, int] | None:
        """Bring worker ``group`` to ``want`` copies (``procguard scale``, the autoscaler).

        Returns ``(why, exit status)`` when it cannot be done now, else None:
        added copies are started by the loop, removed ones drained and
        stopped newest first; ``peer`` (if any) hears the answer when that is
        over, ``done(from, to)`` is called when the count changed.
        """
        copies = self._copies
        if copies is None:
            return "this supervisor cannot scale", 1
        if group in self._scaling:
            return f"a scale of {group} is under way (wait for it to finish)", 1
        current = self.copies_of(group)
        have = len(current)
        plan = plan_scale([w.index for w in current], want)
        if not plan.add and not plan.remove:
            if peer is not None:
                peer.send(_lines(f"{group} has {have} copies already; nothing to do"))
            return None
        if plan.add:
            clash = copies.port_clash(group, want)
            if clash is not None:
                return f"cannot scale {group} to {want}: {clash}", 2
            added = copies.add_copies(group, plan.add, want)
            batch = Batch(peer, [w.name for w in added], header=f"{group}: {have} -> {want} copies")
            for worker in added:
                worker.waiters.append(batch.waiter(worker.name, started_line))
                worker.want_start = True  # started by the loop once its dependencies run
            if done is not None:
                done(have, want)
            return None
        self._scaling.add(group)
        leaving = [next(w for w in current if w.index == index) for index in plan.remove]

        def stopped_all(stopped: list[str]) -> None:
            self._scaling.discard(group)
            left = have - len(stopped)
            what = f"stopped {', '.join(stopped)}" if stopped else "nothing stopped"
            if peer is not None:
                peer.send(_lines(f"{group}: {have} -> {left} copies; {what} (newest first)"))
            self._publish(self._clock())

        if done is not None:
            done(have, want)
        ScaleDown(leaving, lifecycle=self._lifecycle, remove=copies.remove_copy, clock=self._clock,
                  done=stopped_all, by=by).next()
        return None

    def copies_of(self, group: str) -> list[Worker]:
        """The copies of worker ``group`` that stay (not on their way out after a reload)."""
        return [w for w in self._workers.values() if w.group == group and not w.retiring]

    def scaling(self, group: str) -> bool:
        """True while a scale-down of ``group`` is stopping copies."""
        return group in self._scaling

    # -- scale ------------------------------------------------------------------------------

#: The requests about workers, besides ping, status and down.
COMMANDS = ("start", "stop", "restart", "signal", "scale", "reload")


def _signal_number(value: object) -> int:
    """The signal number a ``signal`` request carries (checked again here: the client may be anyone)."""
    if isinstance(value, bool) or not isinstance(value, int) or value not in _VALID_SIGNALS:
        raise UsageError(f"{value!r} is not a signal number")
    return value


_VALID_SIGNALS = frozenset(int(s) for s in signal.valid_signals())
