"""A worker's listening socket, handed down the systemd way (``listen = "HOST:PORT"``).

``procguard up`` binds the address once, before the worker's first process,
and keeps it open while the stack runs: every copy and every generation of
the worker (a blue-green ``procguard reload`` runs two at once) gets the same
socket as file descriptor 3, with ``LISTEN_FDS=1``, ``LISTEN_FDNAMES=<worker>``
and ``LISTEN_PID=<its own pid>``, the protocol of systemd's socket
activation (``sd_listen_fds``; uvicorn ``--fd 3``, gunicorn, or a plain
``socket.socket(fileno=3)`` take it). Connections wait in the kernel's queue
of that one socket while processes come and go, so none is refused.

Two details of the protocol decide how a process is started:

- ``LISTEN_PID`` is the process's own pid, known only after the fork, while
  the environment handed to exec is built before it;
- the descriptor must be exactly 3, and between fork and exec Python's
  ``subprocess`` keeps only descriptors open in the parent under the same
  numbers (the parent's 3 is someone else's, and after-fork hooks close the
  supervisor's locks in the child).

So the socket is handed as the child's stdin (workers get ``/dev/null``
there otherwise) and a tiny ``/bin/sh`` wrapper sets the pid and moves the
socket: ``LISTEN_PID=$$; export LISTEN_PID; exec "$@" 3<&0 0</dev/null``.
Same pid (``exec``), no Python code run in the child between fork and exec,
about a millisecond per start.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, NamedTuple

from .errors import UsageError, shown
from .units import parse_port

if TYPE_CHECKING:
    import socket

#: The descriptor every process of a ``listen`` worker finds its socket on (``SD_LISTEN_FDS_START``).
LISTEN_FD = 3

#: Where the socket sits in the supervisor: never 0-2 or 3.
_PARENT_FD_MIN = 10

_ADDRESS_RE = re.compile(r"\A(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9_.-]+)):(?P<port>\d{1,5})\Z")

ACCEPTED = 'use "HOST:PORT", e.g. "127.0.0.1:8080", "0.0.0.0:8080" or "[::1]:8080"'

#: The exec wrapper: LISTEN_PID = the program's own pid (``$$``: exec keeps it), stdin (the socket) -> 3.
_WRAPPER = (
    "/bin/sh", "-c", 'LISTEN_PID=$$; export LISTEN_PID; exec "$@" 3<&0 0</dev/null', "procguard-listen"
)


class ListenAddress(NamedTuple):
    """Where a worker's socket listens."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_listen(value: object) -> ListenAddress:
    """``"HOST:PORT"`` as a :class:`ListenAddress`; anything else is one line naming what is accepted."""
    match = _ADDRESS_RE.match(value) if isinstance(value, str) else None
    if match is None:
        raise UsageError(f"{shown(value)} is not an address ({ACCEPTED})")
    port = parse_port(match["port"])
    if port == 0:
        raise UsageError(f"{shown(value)}: port 0 is not a fixed port ({ACCEPTED})")
    return ListenAddress(match["v6"] or match["host"], port)


def bind(address: ListenAddress, *, backlog: int = 4096) -> socket.socket:
    """The listening socket for ``address``, kept out of every child but those it is handed to.

    A port that cannot be had is one line (:class:`UsageError`). ``backlog``
    is capped by the kernel's ``net.core.somaxconn``. (``socket`` and
    ``fcntl`` are imported here: reading procguard.toml does not need them.)
    """
    import fcntl
    import socket

    from .health.listen import bind_listener

    try:
        sock = bind_listener(address.host, address.port, backlog=backlog)
    except UsageError as error:
        raise UsageError(f"listen {address}: {str(error).replace('health ', '')}") from None
    fd = fcntl.fcntl(sock.fileno(), fcntl.F_DUPFD_CLOEXEC, _PARENT_FD_MIN)
    moved = socket.socket(fileno=fd)
    sock.close()
    return moved


def listen_environment(worker: str) -> dict[str, str]:
    """What a process with the socket finds in its environment (``LISTEN_PID`` is set by the wrapper)."""
    return {"LISTEN_FDS": "1", "LISTEN_FDNAMES": worker}


def with_listen_pid(argv: list[str]) -> list[str]:
    """``argv`` through the wrapper: ``LISTEN_PID`` = the program's pid, its stdin (the socket) -> fd 3."""
    return [*_WRAPPER, *argv]
