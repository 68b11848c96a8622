"""Acting on several workers at once: one answer for all of them, stops in reverse dependency order.

A control request that names several workers (``stop 'w*'``, ``restart
all``, a config reload) gets one answer, sent once every worker has made its
transition: one line per worker (:class:`Batch`). Several workers stop as
``down`` stops the stack (:class:`OrderedStop`): a worker is asked to stop
only once no other worker of the same request that depends on it still
runs, so independent workers stop in parallel and a chain stops from its
end. Starting in dependency order needs nothing here: the event loop starts
a worker marked ``want_start`` once what it depends on runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from ..outcome import StopOutcome
from .control import Peer
from .lifecycle import Lifecycle
from .states import WorkerState
from .worker import Worker

logger = logging.getLogger(__name__)

S = WorkerState


class Batch:
    """The answer to one request about several workers, sent when the last one is in.

    ``peer`` None (a SIGHUP has no client): each line is logged instead.
    ``footer`` lines (a count of unchanged workers) follow the workers' lines,
    a ``header`` line (``api: 1 -> 3 copies``) comes before them.
    """

    def __init__(
        self, peer: Peer | None, names: Sequence[str], *, footer: Sequence[str] = (), header: str = ""
    ) -> None:
        self._peer = peer
        self._header = header
        self._lines: dict[str, tuple[bool, str] | None] = dict.fromkeys(names)
        self._footer = list(footer)
        self._sent = False

    def done(self, name: str, ok: bool, message: str) -> None:
        """Record ``name``'s line (the first one counts); answer once every worker has one."""
        if self._lines.get(name) is None:
            self._lines[name] = (ok, message)
        self.send_if_complete()

    def waiter(self, name: str, line: Callable[[Worker], tuple[bool, str]]) -> Callable[[Worker], None]:
        """A waiter for ``worker.waiters`` that records ``line(worker)`` when the worker has moved."""
        return lambda worker: self.done(name, *line(worker))

    def send_if_complete(self) -> None:
        if self._sent or any(line is None for line in self._lines.values()):
            return
        self._sent = True
        lines = [line for line in self._lines.values() if line is not None]
        ok = all(good for good, _ in lines)
        entries = [{"ok": True, "message": self._header}] if self._header else []
        entries += [{"ok": good, "message": text} for good, text in lines]
        entries += [{"ok": True, "message": text} for text in self._footer]
        if self._peer is None:
            for entry in entries:
                logger.log(logging.INFO if entry["ok"] else logging.WARNING, "%s", entry["message"])
            return
        reply: dict[str, Any] = {"ok": ok, "lines": entries}
        if not ok:
            reply["exit_status"] = 1
        self._peer.send(reply)


def state_line(worker: Worker, *, ok: bool, prefix: str = "") -> str:
    """``api is running (pid 12)``, with the last exit's reason when the worker did not get there."""
    message = f"{prefix}{worker.name} is {worker.state}" + (f" (pid {worker.pid})" if worker.pid else "")
    if not ok and worker.last_exit:
        message += f"; last exit: {worker.last_exit['reason']}"
    return message


def stopped_line(worker: Worker) -> tuple[bool, str]:
    """The line of a worker asked to stop: ok once it has no process."""
    ok = not worker.state.has_process
    return ok, state_line(worker, ok=ok)


def started_line(worker: Worker) -> tuple[bool, str]:
    """The line of a worker asked to start: ok once it has a process."""
    ok = worker.state.has_process
    return ok, state_line(worker, ok=ok)


def dependents(worker: Worker, among: Sequence[Worker]) -> list[Worker]:
    """The workers of ``among`` that depend on ``worker``."""
    return [other for other in among if worker.name in other.config.depends_on]


class OrderedStop:
    """Stop ``workers`` from the end of their dependency chains; ``on_stopped`` for each once down.

    A worker whose process is gone already counts as stopped at once.
    ``finished`` is called once, when every worker of the request has stopped.
    """

    def __init__(
        self,
        workers: Sequence[Worker],
        lifecycle: Lifecycle,
        why: StopOutcome,
        *,
        clock: Callable[[], float],
        on_stopped: Callable[[Worker], None] = lambda worker: None,
        finished: Callable[[], None] = lambda: None,
    ) -> None:
        self._all = list(workers)
        self._pending = list(workers)
        self._waiting: set[str] = set()
        self._lifecycle = lifecycle
        self._why = why
        self._clock = clock
        self._on_stopped = on_stopped
        self._finished = finished
        self._over = False

    def begin(self) -> None:
        self._step()

    def _step(self) -> None:
        for worker in list(self._pending):
            if worker not in self._pending:
                continue  # a stop that completed at once went on from here already
            blocked = [
                other
                for other in dependents(worker, self._all)
                if other in self._pending or other.name in self._waiting
            ]
            if blocked:
                continue
            self._pending.remove(worker)
            self._waiting.add(worker.name)
            worker.waiters.append(self._stopped)
            self._lifecycle.request_stop(worker, self._clock(), self._why)
        if not self._pending and not self._waiting and not self._over:
            self._over = True
            self._finished()

    def _stopped(self, worker: Worker) -> None:
        if worker.name not in self._waiting:
            return
        self._waiting.discard(worker.name)
        self._on_stopped(worker)
        self._step()
