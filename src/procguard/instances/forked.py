"""Run a one-off start-up task in a forked child, so what it imports does not stay loaded.

``procguard up`` scans every process once at start (the stale-instance
cleanup, through psutil) and then supervises for days without looking at
other processes again. Imported modules are never unloaded, so doing that
scan in the supervisor itself would keep psutil (about 1.2 MB of RSS) for
the supervisor's whole life. :func:`call_in_fork` runs the task in a
``fork()`` child, which shares the parent's state (the config already
parsed, the logging handlers, the state directory) and hands back a JSON
result through a pipe; the child's imports die with it.

The child only observes and signals other processes, so nothing it does
needs to be undone in the parent. Anything unusual falls back to running
the task in-process, exactly as without the fork: a parent with threads
(forking them is unsafe), a platform without ``fork``, or a child that
fails or dies (then the task runs again here and raises its own error).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


def call_in_fork(task: Callable[[], Any]) -> Any:
    """``task()`` run in a forked child; its JSON-able result, decoded (lists stay lists).

    Blocks until the child exits. Falls back to calling ``task()`` here when
    forking is not safe or the child does not report a result.
    """
    if not hasattr(os, "fork") or threading.active_count() > 1:
        return task()
    for stream in (sys.stdout, sys.stderr):  # or the child would write their buffers a second time
        if stream is not None:
            stream.flush()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child ends in os._exit, coverage cannot see it
        _child(task, read_fd, write_fd)
    os.close(write_fd)
    try:
        with os.fdopen(read_fd, "rb") as reader:
            data = reader.read()
    finally:
        _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) == 0 and data:
        return json.loads(data)
    log.debug("forked task (pid %s) ended with status %s, no result; running it in-process", pid, status)
    return task()


def _child(task: Callable[[], Any], read_fd: int, write_fd: int) -> None:
    """Run ``task`` and write its result; never return (no parent cleanup runs twice)."""
    code = 1
    try:
        os.close(read_fd)
        payload = json.dumps(task()).encode()
        with os.fdopen(write_fd, "wb") as writer:
            writer.write(payload)
        code = 0
    except BaseException:  # the parent runs the task again and raises its error
        code = 1
    finally:
        for handler in logging.getLogger().handlers:
            try:
                handler.flush()
            except Exception:  # nothing to do about a broken handler here
                pass
        os._exit(code)
