"""Cleanup callbacks: run each one bounded by a timeout, and never let one stop the others.

A cleanup callback (registered with
:meth:`~procguard.manager.ProcessManager.add_cleanup`) may be a plain
function, a function returning an awaitable, or a coroutine function. A
callback that hangs must not keep the process from exiting, so each runs in
a daemon thread that is abandoned once ``timeout_s`` has passed; one that
raises is logged with its traceback, and the caller moves on to the next.
The thread runs in a copy of the caller's context (``contextvars``), so a
callback sees what the shutdown's code sees, e.g. the current tracing span.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import concurrent.futures

log = logging.getLogger(__name__)

CleanupFn = Callable[[], Any]


def callable_name(fn: object) -> str:
    """A readable name for ``fn`` in log lines: its qualified name, else its repr."""
    return str(getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn))


def run_in_thread(fn: CleanupFn, *, name: str) -> concurrent.futures.Future[Any]:
    """Run ``fn`` (sync, or async in a fresh loop) in a daemon thread we can abandon on timeout."""
    import asyncio
    import concurrent.futures
    import contextvars
    import inspect

    future: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def target() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            result = fn()
            if inspect.isawaitable(result):
                result = asyncio.run(_await(result))
        except BaseException as error:
            future.set_exception(error)
        else:
            future.set_result(result)

    context = contextvars.copy_context()
    try:
        threading.Thread(target=context.run, args=(target,), name=name, daemon=True).start()
    except RuntimeError:
        # CPython 3.12.0-3.12.1 refuse new threads once the interpreter has begun
        # to exit (gh-113964, fixed in 3.12.2): while it joins non-daemon threads,
        # which is when the monitor runs a forgotten shutdown(), and in atexit.
        # A cleanup that runs unbounded beats one that does not run at all.
        log.warning("cannot start a thread for cleanup %s; running it without its timeout", callable_name(fn))
        target()
    return future


def run_cleanup(fn: CleanupFn, timeout_s: float, *, label: str, pid: int) -> None:
    """Run one callback from synchronous code, waiting at most ``timeout_s`` (0: no bound).

    Async callbacks run in a fresh event loop in the callback's own thread.
    Never raises: a timeout is logged as an error, an exception with its traceback.
    """
    import concurrent.futures

    future = run_in_thread(fn, name=f"procguard-cleanup-{callable_name(fn)}")
    try:
        future.result(timeout=timeout_s or None)
    except concurrent.futures.TimeoutError:
        log.error(
            "%s (pid %d): cleanup %s still running after %gs; moving on",
            label, pid, callable_name(fn), timeout_s,
        )
    except Exception:
        log.exception("%s (pid %d): cleanup %s failed", label, pid, callable_name(fn))


async def run_cleanup_async(fn: CleanupFn, timeout_s: float, *, label: str, pid: int) -> None:
    """:func:`run_cleanup` for asyncio code: coroutine functions run on the current loop.

    Sync callbacks still run in a thread, so a blocking one cannot stall the
    loop past ``timeout_s``.
    """
    import asyncio
    import inspect

    timeout = timeout_s or None
    try:
        if inspect.iscoroutinefunction(fn):
            await asyncio.wait_for(fn(), timeout)
        else:
            future = run_in_thread(fn, name=f"procguard-cleanup-{callable_name(fn)}")
            await asyncio.wait_for(asyncio.wrap_future(future), timeout)
    except asyncio.TimeoutError:
        log.error(
            "%s (pid %d): cleanup %s still running after %gs; moving on",
            label, pid, callable_name(fn), timeout_s,
        )
    except Exception:
        log.exception("%s (pid %d): cleanup %s failed", label, pid, callable_name(fn))


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable
