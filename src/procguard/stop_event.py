"""A one-way event that wakes every sleeper at once, in threads and in asyncio tasks alike.

The manager's :meth:`~procguard.manager.ProcessManager.sleep` and
:meth:`~procguard.manager.ProcessManager.sleep_async` wait on it so that a
worker asleep between iterations reacts to a stop immediately instead of at
the end of its nap. ``threading.Event`` covers the threads; an asyncio task
cannot block on it without tying up a thread, so each async sleeper gets a
future on its own loop, resolved through ``call_soon_threadsafe`` when the
event is set (usually from the monitor thread).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio


class StopEvent:
    """Set once when a stop is due; :meth:`wait` and :meth:`wait_async` return at once from then on."""

    __slots__ = ("_event", "_lock", "_waiters")

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._waiters: set[asyncio.Future[None]] = set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def set(self) -> None:
        """Wake every sleeper, sync and async (any thread; not from a signal handler)."""
        self._event.set()
        with self._lock:
            waiters = list(self._waiters)
        for waiter in waiters:
            try:
                waiter.get_loop().call_soon_threadsafe(_resolve, waiter)
            except RuntimeError:  # loop closed
                pass

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds; True when woken because the event is set."""
        return self._event.wait(timeout)

    async def wait_async(self, timeout: float) -> bool:
        """``await`` up to ``timeout`` seconds (running loop); True when woken because the event is set."""
        import asyncio

        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        with self._lock:
            self._waiters.add(waiter)
        # Registered first, checked second: a set() in between either sees the
        # waiter or is seen here, so no wake-up is lost.
        if self._event.is_set():
            waiter.set_result(None)
        try:
            done, _ = await asyncio.wait({waiter}, timeout=timeout)
        finally:
            with self._lock:
                self._waiters.discard(waiter)
            if not waiter.done():
                waiter.cancel()
        return bool(done)


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
