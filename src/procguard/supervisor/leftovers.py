"""Process groups whose leader has exited but whose members may remain.

A worker leads its own process group; when the leader exits, children it
did not stop may still be in the group. The supervisor sends the group
SIGTERM at once (:meth:`LeftoverGroups.add`), checks it at each turn of the
loop (:meth:`LeftoverGroups.sweep`), SIGKILLs what is still there after
``orphan_grace_s`` (and again every second) and tells the watchdog to
forget a group once it is empty.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from dataclasses import dataclass

from .watchdog import WatchdogLink

logger = logging.getLogger(__name__)


@dataclass
class _Group:
    """A process group whose leader has exited but members may remain."""

    pgid: int
    kill_at: float


class LeftoverGroups:
    """The groups still being emptied; falsy when there are none."""

    def __init__(self, *, grace_s: float, watchdog: WatchdogLink) -> None:
        self._grace_s = grace_s
        self._watchdog = watchdog
        self._groups: dict[int, _Group] = {}

    def __bool__(self) -> bool:
        return bool(self._groups)

    def add(self, pgid: int, now: float) -> None:
        """The leader of ``pgid`` exited: SIGTERM the rest of the group now, SIGKILL after grace."""
        self._groups[pgid] = _Group(pgid, now + self._grace_s)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)

    def sweep(self, now: float) -> None:
        """Forget the groups that are empty; SIGKILL those past their deadline."""
        for pgid, group in list(self._groups.items()):
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                del self._groups[pgid]
                self._watchdog.unwatch(pgid)
                continue
            except PermissionError:
                pass
            if now >= group.kill_at:
                logger.warning("leftover processes of group %s did not exit, killing them", pgid)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, signal.SIGKILL)
                group.kill_at = now + 1.0

    def kill_all(self) -> None:
        """SIGKILL every group still listed (a forced stop, or the way out)."""
        for pgid in list(self._groups):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
