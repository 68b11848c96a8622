"""Applying a re-read procguard.toml to the running stack (``procguard reload``, SIGHUP).

:func:`.reconfig.plan_reload` says what differs; :class:`StackReload`
carries it out, in the event loop, in this order:

1. removed workers stop gracefully, in reverse dependency order (a ``stop``
   row in history, reason ``stopped``, detail ``procguard reload: removed
   from procguard.toml``); each leaves the supervisor once its process is
   gone, its health port released;
2. changed workers take their new settings through one function,
   :func:`change_worker` (today a graceful restart of the worker: a worker
   running is stopped and started again with the new settings; one that is
   stopped takes them on at its next start; one in backoff or FATAL starts
   again now with them);
3. added workers start once the removed ones are gone (a health port a
   removed worker held is free by then), in dependency order;
4. unchanged workers are not touched: same process, same PID.

The answer (or, for SIGHUP, the log) has one line per worker that the
reload touched, sent once each has made its transition, and one line
counting the unchanged ones.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, MutableMapping

from ..config import StackConfig, WorkerConfig
from ..outcome import StopOutcome
from .bulk import Batch, OrderedStop, state_line
from .lifecycle import Lifecycle, operator_stop
from .reconfig import Change, ReloadPlan
from .states import WorkerState
from .worker import Worker

logger = logging.getLogger(__name__)

S = WorkerState


def change_worker(
    worker: Worker, config: WorkerConfig, lifecycle: Lifecycle, now: float, why: StopOutcome
) -> str:
    """Give ``worker`` its new settings (the one place a reload's "changed" action lives).

    Returns what happens, in a few words, for the reload's answer. A worker
    with a process is stopped gracefully and started again at once with the
    new settings (unless an operator's stop is already under way: then it
    stays stopped and takes them at its next start). Without a process the
    settings are in force now; a worker waiting in backoff or FATAL is
    started again with them (the change may be its fix), a stopped one stays
    stopped.
    """
    worker.pending_config = config
    if worker.proc is not None:
        operator_stopping = (
            worker.state is S.STOPPING and worker.held_by_operator and not worker.restart_after_stop
        )
        if operator_stopping:
            return "stopping; new settings at its next start"
        worker.restart_after_stop = True
        lifecycle.request_stop(worker, now, why)
        return "restarting"
    lifecycle.take_config(worker)
    if worker.state is S.BACKOFF:
        worker.next_start_at = None
        worker.set_state(S.STOPPED)
        worker.want_start = True  # started again by the loop, with the new settings
        return "restarting"
    if worker.state is S.FATAL:
        worker.want_start = True
        return "starting"
    return "stopped; new settings at its next start"


def _changes_text(changes: list[Change]) -> str:
    return ", ".join(str(change) for change in changes)


class StackReload:
    """Carries out a :class:`ReloadPlan` on the supervisor's workers."""

    def __init__(
        self,
        *,
        workers: MutableMapping[str, Worker],
        lifecycle: Lifecycle,
        make_worker: Callable[[WorkerConfig], Worker],
        clock: Callable[[], float],
    ) -> None:
        self._workers = workers
        self._lifecycle = lifecycle
        self._make_worker = make_worker
        self._clock = clock

    def apply(
        self, plan: ReloadPlan, new: StackConfig, batch_for: Callable[[list[str], list[str]], Batch]
    ) -> None:
        """Carry ``plan`` out; ``batch_for(names, footer)`` makes the answer's collector."""
        now = self._clock()
        footer = [f"{len(plan.unchanged)} unchanged"] if plan.unchanged else []
        if plan.empty:
            footer = [f"nothing changed ({len(plan.unchanged)} workers unchanged)"]
        names = [*plan.removed, *plan.changed, *plan.added]
        batch = batch_for(names, footer)
        for name in plan.changed:
            worker = self._workers[name]
            what = change_worker(worker, new.workers[name], self._lifecycle, now, _why("settings changed"))
            text = _changes_text(plan.changed[name])
            if worker.state.has_process or worker.want_start:
                line = functools.partial(_started, what=f"changed: {text}")
                worker.waiters.append(batch.waiter(name, line))
            else:
                batch.done(name, True, f"{name}: changed: {text} ({what})")
        added: list[Worker] = []
        for name in plan.added:
            retiring = self._workers.get(name)
            if retiring is not None:  # removed by an earlier reload and still stopping: kept after all
                worker = retiring
                worker.retiring = False
                change_worker(worker, new.workers[name], self._lifecycle, now, _why("added again"))
                if worker.proc is not None:
                    worker.restart_after_stop = True  # its removal's stop is under way: start it after
            else:
                worker = self._make_worker(new.workers[name])
                self._workers[name] = worker
            worker.waiters.append(batch.waiter(name, lambda w: _started(w, "added")))
            added.append(worker)
        self._order(new)

        def start_added() -> None:
            for worker in added:
                if worker.proc is None:
                    worker.want_start = True

        removed = [self._workers[name] for name in plan.removed]
        for worker in removed:
            worker.retiring = True
        OrderedStop(
            removed,
            self._lifecycle,
            _why("removed from procguard.toml"),
            clock=self._clock,
            on_stopped=lambda worker: batch.done(worker.name, True, f"{worker.name}: removed"),
            finished=start_added,
        ).begin()
        batch.send_if_complete()

    def _order(self, new: StackConfig) -> None:
        """Keep the workers in the new file's order (status, page); retiring ones after them."""
        order = [name for name in new.workers if name in self._workers]
        order += [name for name in self._workers if name not in new.workers]
        items = [(name, self._workers[name]) for name in order]
        self._workers.clear()
        self._workers.update(items)


def _why(what: str) -> StopOutcome:
    return operator_stop(f"procguard reload: {what}")


def _started(worker: Worker, what: str) -> tuple[bool, str]:
    ok = worker.state.has_process
    return ok, f"{worker.name}: {what} ({state_line(worker, ok=ok)})"
