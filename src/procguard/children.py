"""Stopping the children a worker leaves behind when it shuts down, so none is orphaned.

Used by :meth:`~procguard.manager.ProcessManager.shutdown`: every descendant
of the worker still running then gets the usual schedule of
:func:`procguard.proctree.terminate_processes` (SIGTERM, wait, SIGKILL).
multiprocessing's own helpers (the resource tracker and the fork server) are
left alone: they exit with us on their own.
"""

from __future__ import annotations

import logging
import sys

log = logging.getLogger(__name__)


def terminate_children(pid: int, grace_s: float, *, label: str) -> None:
    """Stop every descendant of ``pid`` (SIGTERM, ``grace_s``, SIGKILL); log what was stopped.

    Never raises for a process that vanished or denied access; a child still
    alive after SIGKILL is logged as an error.
    """
    from .proctree import descendants, terminate_processes

    helpers = multiprocessing_helper_pids()
    procs = [p for p in descendants(pid) if p.pid not in helpers]
    if not procs:
        return
    log.info(
        "%s (pid %d): stopping %d child process(es): %s",
        label, pid, len(procs), ", ".join(str(p.pid) for p in procs),
    )
    _gone, alive = terminate_processes(procs, grace_s)
    if alive:
        log.error(
            "%s (pid %d): child process(es) still alive after SIGKILL: %s",
            label, pid, ", ".join(str(p.pid) for p in alive),
        )


def multiprocessing_helper_pids() -> set[int]:
    """pids of multiprocessing's resource tracker and fork server: they exit with us on their own."""
    pids: set[int] = set()
    tracker_mod = sys.modules.get("multiprocessing.resource_tracker")
    if tracker_mod is not None:
        pid = getattr(getattr(tracker_mod, "_resource_tracker", None), "_pid", None)
        if isinstance(pid, int):
            pids.add(pid)
    forkserver_mod = sys.modules.get("multiprocessing.forkserver")
    if forkserver_mod is not None:
        pid = getattr(getattr(forkserver_mod, "_forkserver", None), "_forkserver_pid", None)
        if isinstance(pid, int):
            pids.add(pid)
    return pids
