"""``procguard scale X N``: which copies to add or take away (pure), and the scale-down in order.

Scaling up adds the copies after the last one (``X:4``, ``X:5`` ...) and
starts them at once. Scaling down takes the newest copies away first, one at
a time: each is stopped as ``procguard stop`` stops it (its drain, SIGTERM,
its grace, a history row), the next only once it has stopped, so the copies
that stay keep serving and at most one copy is between serving and gone.
A copy taken away leaves the status, the page and the metrics; its log file
and history rows stay. The new count lasts while the stack runs:
procguard.toml is the source of truth, and the next ``procguard up`` starts
the number written there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

from .lifecycle import Lifecycle, operator_stop
from .worker import Worker


class ScalePlan(NamedTuple):
    """The copies to add (by index, in start order) and to take away (newest first)."""

    add: tuple[int, ...]
    remove: tuple[int, ...]


def plan_scale(indices: Sequence[int], want: int) -> ScalePlan:
    """From copies ``indices`` to ``want`` copies: new ones after the highest, the highest go first."""
    ordered = sorted(indices)
    if want >= len(ordered):
        top = ordered[-1] if ordered else 0
        return ScalePlan(tuple(range(top + 1, top + 1 + want - len(ordered))), ())
    return ScalePlan((), tuple(reversed(ordered[want:])))


class ScaleDown:
    """Stops the copies of one plan, newest first, one after the other; ``done(stopped)`` at the end.

    ``remove(worker)`` is called for each copy once it has no process left
    (it leaves the supervisor's workers); a copy restarted on its way out
    (``procguard restart`` meanwhile) is asked to stop again.
    """

    def __init__(
        self,
        copies: Sequence[Worker],
        *,
        lifecycle: Lifecycle,
        remove: Callable[[Worker], None],
        clock: Callable[[], float],
        done: Callable[[list[str]], None],
        by: str = "procguard scale",
    ) -> None:
        self._queue = list(copies)
        self._lifecycle = lifecycle
        self._remove = remove
        self._clock = clock
        self._done = done
        self._stopped: list[str] = []
        self._by = by

    def next(self) -> None:
        """Stop the next copy (or report once none is left)."""
        if not self._queue:
            self._done(self._stopped)
            return
        worker = self._queue.pop(0)
        worker.waiters.append(self._stopped_one)
        self._lifecycle.request_stop(worker, self._clock(), operator_stop(self._by))

    def _stopped_one(self, worker: Worker) -> None:
        if worker.state.has_process:  # restarted on its way out: it still goes
            worker.waiters.append(self._stopped_one)
            worker.restart_after_stop = False
            self._lifecycle.request_stop(worker, self._clock(), operator_stop(self._by))
            return
        self._remove(worker)
        self._stopped.append(worker.name)
        self.next()
