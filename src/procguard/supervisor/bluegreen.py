"""Blue-green reload of a copy (``procguard reload NAME``, and a changed worker in a config reload).

For each copy the reload starts a second process, the new generation, beside
the one that serves (same copy name, same health port, same ``listen``
socket, its own marker), waits until it is ready, then drains and stops the
old one as ``procguard stop`` would. Until then the old process keeps
serving, and if the new one is not ready within ``ready_timeout`` or exits
first, the new one is stopped and the old one stays: the command exits 1
naming why. Both generations have their start and stop rows in history.

When is the new generation ready: once it has run ``ready_after`` (default
2 s) and, for a function worker (``run =``) with a health port, its own
/ready answers 200 (checked again until ``ready_timeout``):

- the supervisor answers the copy's port from the old process's snapshots
  until the switch, so the new process cannot be asked over HTTP there (and
  a second, temporary port would be a port nobody configured): its /ready is
  read from the snapshots it publishes into the mapping handed to it at its
  spawn, exactly what the port will answer after the switch;
- ``ready_after`` counts for it too: a ProcessManager publishes "ready" as
  soon as it starts, before the program had a chance to say it is not
  (``set_ready(False)`` while it warms up);
- a command's /ready is the supervisor's own view ("its process runs"), so
  for a command, and without a health port, ``ready_after`` of running is
  the rule.

At most two generations of a copy exist: a copy being reloaded is not
reloaded again until its reload is over. A new generation is spawned with the
restart policy ``never`` (an exit before the switch is the reload's failure,
not a restart); after the switch it takes the copy's place (its policy,
restarts + 1, its counters, its health port, its probes) and the old one
leaves once its process is gone.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..config import WorkerConfig
from .backoff import Policy
from .function_health import function_snapshot
from .lifecycle import Lifecycle, operator_stop
from .states import WorkerState
from .worker import Worker

logger = logging.getLogger(__name__)

S = WorkerState

#: How often a new generation's readiness is looked at while a reload waits for it.
READY_POLL_S = 0.05

#: What a reload says when it is over: ok, and one line.
Done = Callable[[bool, str], None]


@dataclass
class Swap:
    """One copy's reload under way: the copy serving now, its new generation, when to give up."""

    copy: Worker
    new: Worker
    deadline: float
    done: Done
    failing: str = ""  # why the new one is being stopped (the reload failed), once it is


def is_ready(worker: Worker, now: float, wall: float) -> bool:
    """Whether a new generation is ready (the rules in the module docstring)."""
    if worker.state not in (S.STARTING, S.RUNNING) or worker.started_at is None:
        return False
    if now - worker.started_at < worker.config.ready_after_s:
        return False
    return not worker.publishes_health or function_snapshot(worker, now, wall).ready.is_healthy


class BlueGreen:
    """The reloads under way and the old generations still stopping (used by the event loop only).

    ``make_generation(copy, config)`` makes a second :class:`Worker` for the
    copy (not registered, not started); ``replace(old, new)`` puts ``new`` in
    the copy's place (the supervisor's workers, its health port, its probes);
    ``forget(worker)`` drops a generation whose process is gone (its pipes;
    the copy's log stays open).
    """

    def __init__(
        self,
        *,
        lifecycle: Lifecycle,
        make_generation: Callable[[Worker, WorkerConfig], Worker],
        replace: Callable[[Worker, Worker], None],
        forget: Callable[[Worker], None],
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._lifecycle = lifecycle
        self._make_generation = make_generation
        self._replace = replace
        self._forget = forget
        self._clock = clock
        self._wall = wall_clock
        self._swaps: dict[str, Swap] = {}
        self._old: list[Worker] = []

    def busy(self, name: str) -> bool:
        """True while copy ``name`` is being reloaded."""
        return name in self._swaps

    def processes(self) -> list[Worker]:
        """The generations outside the supervisor's workers: new ones not ready yet, old ones stopping."""
        return [swap.new for swap in self._swaps.values()] + self._old

    def next_deadline(self) -> float | None:
        """When the loop must look again (readiness is polled while a reload waits)."""
        return self._clock() + READY_POLL_S if self._swaps else None

    def can_replace(self, copy: Worker) -> bool:
        """True when ``copy`` has a process that a new generation can take over from."""
        return copy.state in (S.STARTING, S.RUNNING) and not copy.held_by_operator

    def begin(self, copy: Worker, config: WorkerConfig, done: Done) -> None:
        """Start the new generation of ``copy`` with ``config``; ``done(ok, line)`` when it is over."""
        now = self._clock()
        if copy.name in self._swaps:
            done(False, f"{copy.name}: a reload is already under way (wait for it to finish)")
            return
        new = self._make_generation(copy, config)
        new.policy = dataclasses.replace(new.policy, restart="never")  # an early exit fails the reload
        new.generation = copy.generation
        new.stops_total = copy.stops_total  # one count per copy, whichever generation stopped
        new.beside_pid = copy.pid  # a runner takes the copy's second instance lock, not a third
        self._lifecycle.spawn(new, now)
        if new.proc is None:
            why = new.last_outcome.detail if new.last_outcome is not None else "it did not start"
            self._forget(new)
            done(False, f"{copy.name}: not reloaded, the new process could not start ({why}); "
                        f"pid {copy.pid} keeps serving")
            return
        new.held_by_operator = True  # whatever ends it before the switch, it is not restarted
        copy.next_generation = new
        timeout = config.ready_timeout_s
        self._swaps[copy.name] = Swap(copy, new, now + timeout, done)
        logger.info("%s: reload: new process pid %s beside pid %s, waiting up to %gs for it to be ready",
                    copy.name, new.pid, copy.pid, timeout)

    def abort(self, why: str) -> None:
        """Stop every new generation not switched to yet (the stack is stopping)."""
        for swap in list(self._swaps.values()):
            self._fail(swap, why, self._clock())

    def step(self) -> None:
        """Look at each reload under way: switch to a ready new generation, or give up."""
        now, wall = self._clock(), self._wall()
        for name, swap in list(self._swaps.items()):
            new, copy = swap.new, swap.copy
            if not new.state.has_process:
                del self._swaps[name]
                copy.next_generation = None
                self._forget(new)
                why = swap.failing or self._exit_text(new)
                swap.done(False, f"{name}: not reloaded: {why}; pid {copy.pid} keeps serving"
                          if copy.state.has_process else f"{name}: not reloaded: {why}")
            elif swap.failing:
                continue  # being stopped; answered once it is gone
            elif self._lifecycle.exiting:
                self._fail(swap, "the supervisor is shutting down", now)
            elif copy.held_by_operator or (not copy.state.has_process and copy.state is not S.BACKOFF):
                self._fail(swap, f"{name} was stopped meanwhile", now)
            elif is_ready(new, now, wall):
                del self._swaps[name]
                copy.next_generation = None
                self._switch(swap, now)
            elif now >= swap.deadline:
                timeout = new.config.ready_timeout_s
                self._fail(swap, f"the new process (pid {new.pid}) was not ready within {timeout:g}s", now)

    def _exit_text(self, new: Worker) -> str:
        outcome = new.last_outcome
        summary = "" if outcome is None else f": {outcome.reason.value} ({outcome.detail})"
        return f"the new process exited before it was ready{summary}"

    def _fail(self, swap: Swap, why: str, now: float) -> None:
        swap.failing = why
        logger.warning("%s: reload failed: %s; stopping the new process (pid %s)", swap.copy.name, why,
                       swap.new.pid)
        self._lifecycle.request_stop(swap.new, now, operator_stop(f"procguard reload: {why}"))

    def _switch(self, swap: Swap, now: float) -> None:
        """The new generation takes the copy's place; the old one drains and stops."""
        old, new = swap.copy, swap.new
        old_pid = old.pid
        new.held_by_operator = False
        new.policy = Policy.from_worker(new.config)
        new.restarts = old.restarts + 1
        new.cpu_seconds_total += old.cpu_seconds_total
        old.samples.extend(new.samples)
        new.samples = old.samples
        new.last_exit, new.last_outcome = old.last_exit, old.last_outcome
        new.waiters, old.waiters = old.waiters, []
        new.want_start = False
        self._replace(old, new)
        self._old.append(old)
        logger.info("%s: reload: pid %s is ready, draining and stopping pid %s", new.name, new.pid, old_pid)

        def stopped(gone: Worker) -> None:
            if gone.state.has_process:
                gone.waiters.append(stopped)  # not this transition: wait for the process to be gone
                return
            self._old.remove(gone)
            if gone.last_exit is not None and old_pid is not None:
                new.last_exit, new.last_outcome = gone.last_exit, gone.last_outcome
            self._forget(gone)
            swap.done(True, f"{new.name}: reloaded (pid {old_pid} -> {new.pid})")

        old.restart_after_stop = False
        old.retiring = False
        old.waiters.append(stopped)
        self._lifecycle.request_stop(old, now, operator_stop(f"procguard reload: replaced by pid {new.pid}"))
