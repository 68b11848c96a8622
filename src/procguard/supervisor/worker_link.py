"""The supervisor's end of one worker's link (the worker's end is :mod:`procguard.parent_link`).

One socket pair per started process: the supervisor sends the worker's
settings before it starts (``procguard run`` takes its
:class:`~procguard.limits.WorkerLimits` from them), for a function worker
with a health port the shared mapping it publishes its snapshots into, and a stop note right
before each SIGTERM it decides; it reads what the worker reports -- its
helper processes, the process that is really the worker, its stop outcome
-- as the messages arrive (the loop selects on :meth:`WorkerLink.fileno`)
and once more when the process is reaped, so an outcome written just before
exiting is never missed.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

from ..limits import WorkerLimits
from ..outcome import StopOutcome
from ..parent_link import (
    HEALTH,
    HELPER,
    LINK_ENV,
    MAX_MESSAGE,
    OUTCOME,
    SETTINGS,
    STOP,
    STOPPING,
    WORKER_PID,
    HealthMapping,
    decode,
    encode,
)

logger = logging.getLogger(__name__)

__all__ = ["LINK_ENV", "WorkerLink"]


class WorkerLink:
    """One worker process's link: what the supervisor sent, what the worker reported."""

    def __init__(self, limits: WorkerLimits) -> None:
        self._sock, self._child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._sock.setblocking(False)
        self._child.set_inheritable(True)
        self.helpers: set[int] = set()
        self.worker_pid: int | None = None
        self.stopping: StopOutcome | None = None  # a stop the worker decided itself
        self.outcome: StopOutcome | None = None
        self._send(SETTINGS, limits.to_json())

    @property
    def child_fd(self) -> int:
        """The descriptor to pass to the worker (named in its ``PROCGUARD_LINK_FD``)."""
        return self._child.fileno()

    def fileno(self) -> int:
        return self._sock.fileno()

    def started(self) -> None:
        """The worker has its end now: ours of it is closed."""
        self._child.close()

    def send_health_mapping(self, mapping: HealthMapping) -> None:
        """Where the worker publishes its health snapshots (sent before it starts; ``fd`` passed down)."""
        self._send(HEALTH, mapping.to_json())

    def send_stop_note(self, outcome: StopOutcome) -> None:
        """Why the SIGTERM that follows is sent (the worker logs and reports this reason)."""
        self._send(STOP, outcome.to_json())

    def read(self) -> bool:
        """Take every message waiting; False once the worker's end is closed (all its copies)."""
        while True:
            try:
                data = self._sock.recv(MAX_MESSAGE)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:
                return False
            if not data:
                return False
            message = decode(data)
            if message is not None:
                self._take(*message)

    def _take(self, kind: str, value: Any) -> None:
        if kind == HELPER and _is_pid(value):
            self.helpers.add(value)
        elif kind == WORKER_PID and _is_pid(value):
            self.worker_pid = value
        elif kind == STOPPING:
            decided = StopOutcome.from_json(value)
            if decided is not None and self.stopping is None:
                self.stopping = decided
        elif kind == OUTCOME:
            outcome = StopOutcome.from_json(value)
            if outcome is not None:
                self.outcome = outcome

    def _send(self, kind: str, value: Any) -> None:
        try:
            self._sock.send(encode(kind, value))
        except OSError as error:  # the worker is gone: nothing to tell it
            logger.debug("worker link: cannot send %s: %s", kind, error)

    def close(self) -> None:
        self._child.close()
        self._sock.close()


def _is_pid(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 1
