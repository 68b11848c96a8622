"""How the event loop is woken: a self-pipe, and signal handlers that only record.

The loop blocks in ``select`` on the read end of :class:`WakeupPipe`; a
signal (through ``signal.set_wakeup_fd``) or the prober thread writes a byte
to the other end. :class:`SignalInbox`'s handler records the signal number
and nothing else (no logging in a signal handler); the loop pops the
recorded numbers and decides (:meth:`.supervisor.Supervisor._handle_signals`).
SIGCHLD is only a wake-up: the loop reaps with ``waitpid(-1, WNOHANG)``.

Why not :class:`procguard.signals.SignalCapture`: it counts stop signals for
one worker's manager; the supervisor also needs SIGCHLD to wake it and
SIGHUP told apart from the stop signals, in the order they came.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Any

#: The signals the supervisor handles: stop (INT, TERM), re-read procguard.toml (HUP), reap (CHLD).
HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP)


class WakeupPipe:
    """A non-blocking, non-inherited pipe: :meth:`wake` from anywhere makes ``fd`` readable."""

    def __init__(self) -> None:
        self.fd, self.write_fd = os.pipe()
        for fd in (self.fd, self.write_fd):
            os.set_blocking(fd, False)
            os.set_inheritable(fd, False)

    def wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self.write_fd, b"\0")

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self.fd, 4096):
                pass

    def close(self) -> None:
        os.close(self.fd)
        os.close(self.write_fd)


class SignalInbox:
    """Records :data:`HANDLED` signals (except SIGCHLD) for the loop; restores the old handlers."""

    def __init__(self, wakeup: WakeupPipe) -> None:
        self._wakeup = wakeup
        self._received: list[int] = []
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        """Install the handlers and the wake-up fd (main thread only; elsewhere a no-op)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in HANDLED:
            self._previous[signum] = signal.signal(signum, self._on_signal)
        self._previous[-1] = signal.set_wakeup_fd(self._wakeup.write_fd, warn_on_full_buffer=False)

    def restore(self) -> None:
        previous, self._previous = self._previous, {}
        if -1 in previous:
            signal.set_wakeup_fd(previous.pop(-1))
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    def _on_signal(self, signum: int, _frame: object) -> None:
        """Only record: the loop acts (no logging in a signal handler)."""
        if signum != signal.SIGCHLD:
            self._received.append(signum)

    def pop(self) -> int | None:
        """The oldest recorded signal not yet handled, or None."""
        return self._received.pop(0) if self._received else None
