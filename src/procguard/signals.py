"""Scoped signal capture: the handlers only record, the monitor loop acts.

:class:`SignalCapture` installs handlers for SIGTERM and SIGINT (from the main
thread only: Python allows nothing else), remembers the handlers it replaced
and puts them back on :meth:`restore`. Its handler does three things, none of
which can block or take a lock: count the signal, remember which one and
when, and write one byte to a non-blocking pipe. Whoever watches
:attr:`wakeup_fd` (the manager's monitor thread, in ``select``) then decides
what to do: the first signal starts a graceful stop, the second an immediate
exit. Nothing is logged from the handler (a logging lock held by the
interrupted code would deadlock it).

This uses ``signal.signal`` even inside a running asyncio loop, as uvicorn
does, so that the previous handlers can be restored; asyncio's own
``add_signal_handler`` would replace the loop's wakeup fd and could not be
undone cleanly. On Linux a signal sent to the process goes to the main
thread when it does not block it, which interrupts a blocking ``select``,
``epoll`` or lock wait there; the handler runs at once.
"""

from __future__ import annotations

import os
import signal
import threading
import time

# Only what ``procguard run`` needs before its handlers are in: the sooner they
# are, the shorter the window in which a SIGTERM still kills by default action.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from types import FrameType
    from typing import Any, TypeAlias

    _Handler: TypeAlias = Callable[[int, FrameType | None], Any] | int | None

__all__ = ["STOP_SIGNALS", "SignalCapture", "unblock_stop_signals"]

#: Signals that ask a worker to stop.
STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)


def unblock_stop_signals() -> None:
    """Let :data:`STOP_SIGNALS` through: a runner started again with its marker held them over the exec."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)

#: Captures with handlers installed; a forked child (multiprocessing) puts the
#: previous handlers back at once, so that SIGTERM stops it as usual instead of
#: being recorded by a copy of our handler that nobody watches.
_INSTALLED: list[SignalCapture] = []
#: The capture installed by :meth:`SignalCapture.install_early`, until someone takes it.
_EARLY: SignalCapture | None = None


def _restore_in_child() -> None:
    global _EARLY
    _EARLY = None
    for capture in list(_INSTALLED):
        for signum, previous in capture._previous.items():
            try:
                signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
            except (ValueError, OSError):
                pass
        capture.installed = False
    _INSTALLED.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_restore_in_child)


class SignalCapture:
    """Records stop signals; restores the previous handlers when done.

    Attributes read by the monitor (plain attribute reads; the handler only
    ever increments/assigns them):

    - ``count``: stop signals received so far;
    - ``first_signum`` / ``last_signum``: which signals;
    - ``first_at``: ``time.monotonic()`` of the first one.
    """

    def __init__(self, signums: Iterable[int] = STOP_SIGNALS) -> None:
        self.signums = tuple(int(s) for s in signums)
        self.count = 0
        self.first_signum: int | None = None
        self.last_signum: int | None = None
        self.first_at: float | None = None
        self._previous: dict[int, _Handler] = {}
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)
        self.installed = False

    @property
    def wakeup_fd(self) -> int:
        """Readable after each recorded signal (drain it with :meth:`drain`)."""
        return self._read_fd

    @classmethod
    def install_early(cls, signums: Iterable[int] = STOP_SIGNALS) -> None:
        """Record stop signals from now on, before the program has set anything else up.

        ``procguard run`` calls it first thing, so a SIGTERM that arrives
        while it is still importing the target or taking its lock is a
        graceful stop (exit 143) rather than death by the default action.
        Whoever then watches the signals takes this capture over with
        :meth:`take_early`, recorded signals included. Then the stop
        signals are let through: a runner that started itself again with its
        marker (:mod:`procguard.runner.reexec`) held them blocked over the
        exec, so one sent meanwhile is handled now.
        """
        global _EARLY
        if _EARLY is None:
            capture = cls(signums)
            if capture.install():
                _EARLY = capture
        unblock_stop_signals()

    @classmethod
    def take_early(cls) -> SignalCapture | None:
        """The capture :meth:`install_early` installed (once), or None."""
        global _EARLY
        capture, _EARLY = _EARLY, None
        return capture

    @classmethod
    def early_count(cls) -> int:
        """Stop signals the :meth:`install_early` capture has recorded so far (0 if none is installed)."""
        return 0 if _EARLY is None else _EARLY.count

    def install(self) -> bool:
        """Install the handlers (idempotent); returns False (and does nothing) off the main thread."""
        if self.installed:
            return True
        if threading.current_thread() is not threading.main_thread():
            return False
        for signum in self.signums:
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handle)
        self.installed = True
        _INSTALLED.append(self)
        return True

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        """Signal handler: record only. No logging, no locks, no allocation to speak of."""
        if self.first_signum is None:
            self.first_signum = signum
            self.first_at = time.monotonic()
        self.last_signum = signum
        self.count += 1
        self.notify()

    def notify(self) -> None:
        """Wake whoever selects on :attr:`wakeup_fd` (also usable from plain code)."""
        try:
            os.write(self._write_fd, b"\0")
        except OSError:  # pipe full (already readable) or closed
            pass

    def drain(self) -> None:
        """Empty the wakeup pipe."""
        try:
            while os.read(self._read_fd, 512):
                pass
        except OSError:
            pass

    def restore(self) -> None:
        """Put back the handlers this capture replaced (main thread only)."""
        if not self.installed or threading.current_thread() is not threading.main_thread():
            return
        for signum, previous in self._previous.items():
            # A handler set from C (None) cannot be restored from Python: use the default.
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()
        self.installed = False
        if self in _INSTALLED:
            _INSTALLED.remove(self)

    def close(self) -> None:
        """Restore handlers and close the pipe."""
        self.restore()
        for fd in (self._read_fd, self._write_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        self._read_fd = self._write_fd = -1
