"""``--replace``: stop the running instance of a name, then take its lock.

A policy built on two primitives that know nothing of each other: the
single-instance lock (:mod:`.lock`, as small as gunicorn's ``pidfile.py``:
take it or be told who holds it) and ``procguard cleanup``
(:mod:`.cleanup`: find what belongs to the instance, stop it gracefully).
Keeping the policy here, one level above both, is what lets the lock stay a
primitive that never signals anything.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import Any

from ..errors import AlreadyRunningError
from .lock import InstanceLock

log = logging.getLogger(__name__)

#: The environment variable that tells a worker's new generation (``procguard reload NAME``) the pid of
#: the process it is started beside: it may take the name's second lock, :func:`next_generation`.
BESIDE_ENV = "PROCGUARD_RELOAD_BESIDE"


def next_generation(name: str) -> str:
    """The second lock of instance ``name``: held by a new generation while the old one still runs.

    During a blue-green reload two processes of one copy run at once; each
    holds one of the two locks (``NAME`` and ``NAME+next``), so a third one is
    refused as any second start is. The generation after takes whichever is free.
    """
    return f"{name}+next"


#: After the cleanup, how long the old holder may take to close its files
#: (the kernel frees the lock as it exits).
RELEASE_WAIT_S = 1.0


def acquire_instance(
    name: str,
    *,
    replace: bool = False,
    grace_s: float = 30.0,
    state_dir: str | os.PathLike[str] | None = None,
    info: Mapping[str, Any] | None = None,
    health_port: int | None = None,
    marker: str | None = None,
    beside: int | None = None,
) -> InstanceLock:
    """Take the lock of ``name``; with ``replace``, stop its running instance first.

    Without ``replace`` this is :meth:`InstanceLock.acquire`. With it, a
    running instance is stopped the way ``procguard cleanup NAME`` stops it
    (SIGTERM to the lock holder's tree and to every process carrying the
    name's marker in this state directory, SIGKILL after ``grace_s``) and
    the lock is taken over. Raises
    :class:`~procguard.errors.AlreadyRunningError` when the holder cannot be
    stopped (one procguard cannot confirm as ours is never signalled).
    ``beside``: the pid of the generation this one is started beside (a
    reload): held by it, the name's second lock is taken instead.
    """
    keywords: dict[str, Any] = {
        "state_dir": state_dir, "info": info, "health_port": health_port, "marker": marker,
    }
    try:
        return InstanceLock.acquire(name, **keywords)
    except AlreadyRunningError as error:
        if beside is not None and error.pid == beside:
            return InstanceLock.acquire(next_generation(name), **keywords)
        if not replace:
            raise
    from .cleanup import cleanup_instances  # psutil: only when there is something to stop

    log.info("replacing the running instance %r", name)
    report = cleanup_instances(name, grace_s=grace_s, state_dir=state_dir)
    deadline = time.monotonic() + RELEASE_WAIT_S
    while True:
        try:
            return InstanceLock.acquire(name, **keywords)
        except AlreadyRunningError as error:
            if time.monotonic() >= deadline:
                raise AlreadyRunningError(
                    name, error.pid, f"--replace could not stop it ({report.summary()})"
                ) from None
        time.sleep(0.02)
