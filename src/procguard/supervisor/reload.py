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

A worker is a group of copies (``instances``): every copy of a changed
worker takes the new settings; a changed ``instances`` adds the missing
copies (started like added workers) and removes the highest-numbered ones
(stopped like removed workers); a change of ``instances`` alone leaves the
copies that stay untouched. An autoscaled worker keeps the count it has
(brought within a new ``[min, max]``): the autoscaler owns it, and a change
of its rule alone touches no copy (the next reading uses the new rule).

The answer (or, for SIGHUP, the log) has one line per worker that the
reload touched, sent once each has made its transition, and one line
counting the unchanged ones.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Iterable, MutableMapping, Sequence

from ..config import StackConfig, WorkerConfig
from ..outcome import StopOutcome
from .bluegreen import BlueGreen
from .bulk import Batch, OrderedStop, state_line
from .lifecycle import Lifecycle, operator_stop
from .reconfig import Change, ReloadPlan
from .states import WorkerState
from .worker import Worker, port_rebound

logger = logging.getLogger(__name__)

S = WorkerState


def change_worker(
    worker: Worker,
    config: WorkerConfig,
    lifecycle: Lifecycle,
    now: float,
    why: StopOutcome,
    *,
    bluegreen: BlueGreen | None = None,
    answer: Callable[[bool, str], None] | None = None,
) -> str | None:
    """Give ``worker`` its new settings (the one place a reload's "changed" action lives).

    Returns what happens, in a few words, for the reload's answer, or None
    when ``answer(ok, words)`` says it later: a running worker is reloaded
    blue-green (:mod:`.bluegreen`: its new process with the new settings
    beside the old one, which is stopped once the new one is ready; if the
    new one never gets ready, the old one keeps running and takes the new
    settings at its next start). So is every change but one of the health
    port (its port, address, token or kind of answers: the port is bound
    again, which needs the old process gone): then, or without ``bluegreen``,
    the worker is stopped gracefully and started again at once with the new
    settings (unless an operator's stop is already under way: then it stays
    stopped and takes them at its next start). Without a process the
    settings are in force now; a worker waiting in backoff or FATAL is
    started again with them (the change may be its fix), a stopped one stays
    stopped.
    """
    worker.pending_config = config
    if (
        bluegreen is not None
        and answer is not None
        and bluegreen.can_replace(worker)
        and not bluegreen.busy(worker.name)
        and not port_rebound(worker.config, config)
    ):
        bluegreen.begin(worker, config, answer)
        return None
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


#: Keys whose change alone leaves the copies that stay running untouched.
_COUNT_KEYS = frozenset({"instances", "autoscale"})


def copies_after_reload(config: WorkerConfig, existing: Iterable[Worker]) -> int:
    """How many copies a worker has after a reload: ``instances``, or for an autoscaled worker
    that runs, the count it has now within the new ``[min, max]``."""
    rule = config.autoscale
    running = sum(1 for worker in existing if not worker.retiring)
    if rule is None or running == 0:
        return config.instances
    return max(rule.min, min(rule.max, running))


def _changes_text(changes: list[Change]) -> str:
    return ", ".join(str(change) for change in changes)


class StackReload:
    """Carries out a :class:`ReloadPlan` on the supervisor's workers (copies grouped by worker).

    ``make_copies(config, indices, count)`` makes copies ``indices`` of a
    worker (registered, not started), each told there are ``count``.
    """

    def __init__(
        self,
        *,
        workers: MutableMapping[str, Worker],
        lifecycle: Lifecycle,
        make_copies: Callable[[WorkerConfig, Sequence[int], int], list[Worker]],
        clock: Callable[[], float],
        bluegreen: BlueGreen | None = None,
    ) -> None:
        self._workers = workers
        self._bluegreen = bluegreen
        self._lifecycle = lifecycle
        self._make_copies = make_copies
        self._clock = clock

    def _copies(self, group: str) -> dict[int, Worker]:
        return {w.index: w for w in self._workers.values() if w.group == group}

    def apply(
        self, plan: ReloadPlan, new: StackConfig, batch_for: Callable[[list[str], list[str]], Batch]
    ) -> None:
        """Carry ``plan`` out; ``batch_for(names, footer)`` makes the answer's collector."""
        now = self._clock()
        footer = [f"{len(plan.unchanged)} unchanged"] if plan.unchanged else []
        if plan.empty:
            footer = [f"nothing changed ({len(plan.unchanged)} workers unchanged)"]
        removed: list[Worker] = []
        for group in plan.removed:
            removed += [w for w in self._copies(group).values() if not w.retiring]
        changed: list[tuple[Worker, str]] = []
        added: list[tuple[Worker, str]] = []
        ruled: list[tuple[str, str]] = []  # workers whose autoscale rule alone changed: (name, line)
        for group in [*plan.changed, *plan.added]:
            config = new.workers[group]
            changes = plan.changed.get(group, [])
            settings_changed = any(change.key not in _COUNT_KEYS for change in changes)
            text = f"changed: {_changes_text(changes)}" if changes else "added"
            existing = self._copies(group)
            count = copies_after_reload(config, existing.values())
            if any(change.key == "autoscale" for change in changes) and existing and not settings_changed:
                ruled.append((group, f"{group}: changed: {_changes_text(changes)} (its copies run on)"))
            for index, worker in sorted(existing.items()):
                if index > count:
                    if not worker.retiring:
                        removed.append(worker)
                elif worker.retiring:  # removed by an earlier reload and still stopping: kept after all
                    worker.retiring = False
                    change_worker(worker, config, self._lifecycle, now, _why("added again"))
                    if worker.proc is not None:
                        worker.restart_after_stop = True  # its removal's stop is under way: start it after
                    added.append((worker, text))
                elif settings_changed:
                    changed.append((worker, text))
                else:  # only the count or the rule changed: the copy keeps running, and knows the rule
                    worker.config = dataclasses.replace(worker.config, autoscale=config.autoscale)
            missing = [i for i in range(1, count + 1) if i not in existing]
            added += [(worker, text) for worker in self._make_copies(config, missing, count)]
        names = [w.name for w in removed] + [w.name for w, _ in changed] + [w.name for w, _ in added]
        batch = batch_for([*(group for group, _ in ruled), *names], footer)
        for group, line in ruled:
            batch.done(group, True, line)
        for worker, text in changed:
            config = new.workers[worker.group]
            answer = functools.partial(_reloaded, batch, worker.name, text)
            what = change_worker(worker, config, self._lifecycle, now, _why("settings changed"),
                                 bluegreen=self._bluegreen, answer=answer)
            if what is None:
                continue  # reloaded blue-green: answered when the switch is over (or failed)
            if worker.state.has_process or worker.want_start:
                worker.waiters.append(batch.waiter(worker.name, functools.partial(_started, what=text)))
            else:
                batch.done(worker.name, True, f"{worker.name}: {text} ({what})")
        for worker, text in added:
            worker.waiters.append(batch.waiter(worker.name, functools.partial(_started, what=text)))
        self._order(new)

        def start_added() -> None:
            for worker, _ in added:
                if worker.proc is None:
                    worker.want_start = True

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
        """Keep the workers in the new file's order, copies by number (status, page); retiring ones after."""
        position = {name: i for i, name in enumerate(new.workers)}
        last = len(position)
        ordered = sorted(
            self._workers.values(),
            key=lambda w: (last if w.retiring else position.get(w.group, last), w.group, w.index),
        )
        self._workers.clear()
        self._workers.update((w.name, w) for w in ordered)


def _why(what: str) -> StopOutcome:
    return operator_stop(f"procguard reload: {what}")


def _reloaded(batch: Batch, name: str, what: str, ok: bool, line: str) -> None:
    """A blue-green reload's line in a config reload's answer: ``api: changed: ... (reloaded ...)``."""
    words = line.split(": ", 1)[-1] if line.startswith(f"{name}: ") else line
    batch.done(name, ok, f"{name}: {what} ({words})")


def _started(worker: Worker, what: str) -> tuple[bool, str]:
    ok = worker.state.has_process
    return ok, f"{worker.name}: {what} ({state_line(worker, ok=ok)})"
