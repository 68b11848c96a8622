"""The systemd notify protocol (``sd_notify``) without libsystemd.

When systemd starts a ``Type=notify`` service it sets ``NOTIFY_SOCKET`` (a
path, or ``@name`` for an abstract socket) and, with ``WatchdogSec=``,
``WATCHDOG_USEC``. The service sends newline-separated ``KEY=value``
datagrams: ``READY=1`` once started, ``WATCHDOG=1`` at least every
``WATCHDOG_USEC`` (systemd restarts the unit otherwise), ``STATUS=...``,
``STOPPING=1``.

Who calls what (the :class:`~procguard.manager.ProcessManager`): ``ready()``
after start; ``watchdog()`` from its sampler thread *only while the work
loop's heartbeat is fresh*, so that a hung loop stops feeding the watchdog
and systemd restarts it; ``status(reason)`` and ``stopping()`` on stop.
``watchdog()`` is rate-limited here to half of ``WATCHDOG_USEC`` (what
``sd_watchdog_enabled(3)`` recommends), so the caller may call it as often
as it likes.

Sending never raises: a worker must not die because systemd went away. A
failure is logged once.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import socket
    from types import TracebackType

logger = logging.getLogger(__name__)

__all__ = ["SystemdNotifier"]


class SystemdNotifier:
    """Sends sd_notify messages to one socket; build it with :meth:`from_env`.

    >>> notifier = SystemdNotifier.from_env()   # None outside systemd
    >>> if notifier:
    ...     notifier.ready()
    """

    def __init__(
        self,
        address: str,
        *,
        watchdog_usec: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not address or address[0] not in "@/":
            msg = f"NOTIFY_SOCKET {address!r} is neither an absolute path nor an abstract name (@...)"
            raise ValueError(msg)
        self.address = address
        self._target = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_interval_s: float | None = (
            watchdog_usec / 1e6 if watchdog_usec and watchdog_usec > 0 else None
        )
        self._clock = clock
        self._last_watchdog: float | None = None
        import socket  # here: a runner outside systemd never needs it

        self._sock: socket.socket | None = socket.socket(
            socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
        )
        self._failed = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SystemdNotifier | None:
        """A notifier for ``NOTIFY_SOCKET``, or None when it is unset (not under systemd).

        ``WATCHDOG_USEC`` enables :meth:`watchdog`, unless ``WATCHDOG_PID``
        names another process (the watchdog is then not ours to feed).
        """
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if not address:
            return None
        watchdog_usec: int | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and (not pid or pid == str(os.getpid())):
            watchdog_usec = int(usec)
        try:
            return cls(address, watchdog_usec=watchdog_usec)
        except ValueError as exc:
            logger.warning("ignoring NOTIFY_SOCKET: %s", exc)
            return None

    # -- messages ------------------------------------------------------------------

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=value`` lines as one datagram; True when it was sent."""
        sock = self._sock
        if sock is None:
            return False
        try:
            sock.sendto("\n".join(assignments).encode(), self._target)
        except OSError as exc:
            if not self._failed:
                self._failed = True
                logger.warning("cannot notify systemd at %s: %s", self.address, exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """``READY=1`` (and ``STATUS=``): the service is up."""
        return self.notify("READY=1", *self._status_line(status))

    def watchdog(self) -> bool:
        """``WATCHDOG=1``, at most once per half watchdog interval; True when sent.

        A no-op (False) when ``WATCHDOG_USEC`` is unset. Call it only while
        the work loop is making progress.
        """
        interval = self.watchdog_interval_s
        if interval is None:
            return False
        now = self._clock()
        if self._last_watchdog is not None and now - self._last_watchdog < interval / 2:
            return False
        sent = self.notify("WATCHDOG=1")
        if sent:
            self._last_watchdog = now
        return sent

    def status(self, text: str) -> bool:
        """``STATUS=<text>`` (one line; shown by ``systemctl status``)."""
        return self.notify(*self._status_line(text))

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1`` (and ``STATUS=``): the service is shutting down."""
        return self.notify("STOPPING=1", *self._status_line(status))

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def __enter__(self) -> SystemdNotifier:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @staticmethod
    def _status_line(text: str | None) -> tuple[str, ...]:
        if text is None:
            return ()
        # A newline would start another assignment (e.g. a forged READY=1).
        one_line = " ".join(str(text).split())
        return (f"STATUS={one_line[:1000]}",)
