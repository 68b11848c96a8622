"""Worker states and the transitions between them, written down once.

The names are part of the ``status --json`` contract (docs/SUPERVISOR.md).
A transition not listed in :data:`TRANSITIONS` is a bug in the supervisor,
so :func:`check_transition` raises instead of letting a worker drift into a
state nobody planned for (supervisor's ``Subprocess.transition`` idea, as an
enum with the table next to it).
"""

from __future__ import annotations

import enum


class WorkerState(str, enum.Enum):
    """Where one supervised worker is in its life."""

    STOPPED = "stopped"  # not running and not going to be started unless asked
    STARTING = "starting"  # spawned, not yet alive for the start period
    RUNNING = "running"  # alive past the start period
    BACKOFF = "backoff"  # exited, waiting for its restart delay
    STOPPING = "stopping"  # asked to stop, waiting for it to exit (TERM, grace, KILL)
    FATAL = "fatal"  # start limit reached; stays down until started by hand

    def __str__(self) -> str:
        return self.value

    @property
    def has_process(self) -> bool:
        """True when a worker in this state has a live process."""
        return self in (WorkerState.STARTING, WorkerState.RUNNING, WorkerState.STOPPING)


S = WorkerState

#: state -> the states it may move to.
TRANSITIONS: dict[WorkerState, frozenset[WorkerState]] = {
    S.STOPPED: frozenset({S.STARTING}),
    S.STARTING: frozenset({S.RUNNING, S.BACKOFF, S.STOPPING, S.STOPPED, S.FATAL, S.STARTING}),
    S.RUNNING: frozenset({S.BACKOFF, S.STOPPING, S.STOPPED, S.FATAL, S.STARTING}),
    S.BACKOFF: frozenset({S.STARTING, S.STOPPED}),
    # A stop procguard decided (a limit, a failed probe) ends like any exit: restarted at
    # once, after a backoff, or FATAL at the start limit.
    S.STOPPING: frozenset({S.STOPPED, S.STARTING, S.BACKOFF, S.FATAL}),
    S.FATAL: frozenset({S.STARTING, S.STOPPED}),
}


class IllegalTransition(RuntimeError):
    """A transition that the table does not allow (a supervisor bug)."""

    def __init__(self, name: str, old: WorkerState, new: WorkerState) -> None:
        self.name, self.old, self.new = name, old, new
        super().__init__(f"worker {name!r}: illegal transition {old} -> {new}")


def check_transition(name: str, old: WorkerState, new: WorkerState) -> WorkerState:
    """Return ``new`` if ``old -> new`` is legal, else raise :class:`IllegalTransition`."""
    if new not in TRANSITIONS[old]:
        raise IllegalTransition(name, old, new)
    return new
