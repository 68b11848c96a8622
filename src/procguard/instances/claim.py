"""An in-process worker's claim on its instance name: the lock, and the marker its children inherit.

:meth:`procguard.manager.ProcessManager.start` claims the name and
:meth:`~procguard.manager.ProcessManager.shutdown` gives it back. Two cases:

- Started by procguard (``procguard run``), the parent already holds the
  lock and exported ``PROCGUARD_INSTANCE=<name>:<id>`` with the namespace of
  the same state directory: the worker *is* that instance, and taking the
  lock again would refuse its own start. Nothing is claimed. (A marker of
  the same name from another state directory is another instance: the
  worker claims its name in its own state directory.)
- Started on its own, the worker takes the :class:`~.lock.InstanceLock`
  (refusing a second instance) and exports a fresh marker, so that every
  child started from then on carries it and ``procguard cleanup`` can find
  them even after the worker is gone.
"""

from __future__ import annotations

import logging
import os

from .lock import InstanceLock
from .marker import MARKER_ENV, inherited_marker, new_marker
from .statedir import namespace_of

log = logging.getLogger(__name__)


class InstanceClaim:
    """The lock of one instance name plus the marker exported for it; see :meth:`take`."""

    __slots__ = ("lock", "marker")

    def __init__(self, lock: InstanceLock, marker: str) -> None:
        self.lock = lock
        self.marker = marker

    @classmethod
    def take(
        cls,
        name: str,
        *,
        pid: int,
        state_dir: str | os.PathLike[str] | None = None,
        health_port: int | None = None,
    ) -> InstanceClaim | None:
        """Lock ``name`` and export its marker; None when the procguard parent holds the lock already.

        Raises :class:`~procguard.errors.AlreadyRunningError` when another
        instance of ``name`` runs (nothing is exported then).
        """
        namespace = namespace_of(state_dir)
        inherited = inherited_marker(name, namespace)
        if inherited is not None:
            log.debug("%s (pid %d): instance lock held by the procguard parent (%s)", name, pid, inherited)
            return None
        marker = new_marker(name, namespace)
        info = {"pid": pid, "source": "ProcessManager"}
        lock = InstanceLock.acquire(
            name, state_dir=state_dir, info=info, health_port=health_port, marker=marker
        )
        # Children started from here on carry the marker, so cleanup can find them.
        os.environ[MARKER_ENV] = marker
        return cls(lock, marker)

    def withdraw_marker(self) -> None:
        """Stop exporting the marker, unless the program has replaced it since."""
        if os.environ.get(MARKER_ENV) == self.marker:
            del os.environ[MARKER_ENV]
