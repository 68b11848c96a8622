"""Stopping the whole stack: in reverse dependency order, a second signal forces it, nothing left behind.

:class:`StopAll` runs at each turn of the loop once the stack is stopping
(Ctrl-C, SIGTERM, ``procguard down``): a worker is asked to stop only when
nothing that depends on it still runs, so independent workers stop in
parallel and a chain stops from its end. :meth:`StopAll.force` (a second
signal) SIGKILLs everything at once; :meth:`StopAll.kill_everything` is the
last resort on the way out, however the loop ended.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable, Iterable, Mapping

from .leftovers import LeftoverGroups
from .lifecycle import Lifecycle, operator_stop
from .states import WorkerState
from .worker import Worker

logger = logging.getLogger(__name__)

S = WorkerState

#: How long the way out waits for killed workers to be reaped.
REAP_WAIT_S = 5.0


def dependents_running(worker: Worker, workers: Mapping[str, Worker]) -> bool:
    """True while a copy of a worker that depends on ``worker`` still has a process."""
    return any(
        worker.group in other.config.depends_on and other.state.has_process for other in workers.values()
    )


class StopAll:
    """The stack-wide stop; ``forced`` once a second signal had to kill."""

    def __init__(
        self,
        workers: Mapping[str, Worker],
        lifecycle: Lifecycle,
        leftovers: LeftoverGroups,
        *,
        generations: Callable[[], Iterable[Worker]] = list,
    ) -> None:
        self._workers = workers
        #: Processes of a copy beside it during a blue-green reload: stopped with it, never left behind.
        self._generations = generations
        self._lifecycle = lifecycle
        self._leftovers = leftovers
        self.forced = False
        self._why = "procguard down"

    @property
    def exiting(self) -> bool:
        return self._lifecycle.exiting

    def begin(self, why: str) -> None:
        """Start stopping everything (once; later calls do nothing)."""
        if self._lifecycle.exiting:
            return
        logger.info("stopping all workers (%s)", why)
        self._why = why
        self._lifecycle.exiting = True

    def _all(self) -> list[Worker]:
        return [*self._workers.values(), *self._generations()]

    def step(self, now: float) -> None:
        """Ask each worker to stop whose dependents are all down (a reload's generations at once)."""
        for worker in self._generations():
            if worker.state.has_process and worker.state is not S.STOPPING:
                self._lifecycle.request_stop(worker, now, operator_stop(self._why))
        for worker in self._workers.values():
            worker.want_start = False
            if worker.state is S.STOPPING or worker.state is S.STOPPED:
                continue
            if worker.state.has_process and dependents_running(worker, self._workers):
                continue  # stop before: what depends on it goes down first
            self._lifecycle.request_stop(worker, now, operator_stop(self._why))

    def done(self) -> bool:
        """True when no worker has a process and no leftover group remains."""
        return not self._leftovers and all(not w.state.has_process for w in self._all())

    def force(self) -> None:
        """A second interrupt: SIGKILL every worker's group and every leftover group now."""
        logger.warning("second interrupt: killing all workers now")
        self.forced = True
        for worker in self._all():
            worker.signal(signal.SIGKILL, group=True)
        self._leftovers.kill_all()

    def kill_everything(self, reap: Callable[[], None], clock: Callable[[], float] = time.monotonic) -> None:
        """Last resort on the way out (normal or not): nothing of ours stays behind.

        SIGKILLs what still runs, then calls ``reap`` until every worker's
        process has been reaped or :data:`REAP_WAIT_S` has passed.
        """
        for worker in self._all():
            if worker.state.has_process:
                worker.signal(signal.SIGKILL, group=True)
        self._leftovers.kill_all()
        deadline = clock() + REAP_WAIT_S
        while any(w.proc is not None for w in self._all()) and clock() < deadline:
            reap()
            time.sleep(0.01)
        reap()
