"""Binding a health port: the one place a port that cannot be had becomes a one-line error.

Kept apart from :mod:`procguard.health.server` (which loads the responder
machinery) so that ``procguard up``, which binds its command workers'
health ports itself, imports only this.
"""

from __future__ import annotations

import errno
import socket

from ..errors import UsageError, shown


def bind_listener(host: str, port: int, *, backlog: int = 512) -> socket.socket:
    """A listening TCP socket on ``host:port``; user mistakes become :class:`UsageError`.

    The messages hold for every caller: what port ``0`` means differs
    (``serve_health`` picks a free port, ``--health-port 0`` and
    ``ProcessManager(health_port=0)`` serve nothing), so no hint here
    suggests it.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        msg = f"health port {shown(port)} is not a port number (use 1 to 65535)"
        raise UsageError(msg)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else "not a valid host name"
        msg = f"health host {shown(host)} is not an address of this machine ({reason})"
        raise UsageError(msg) from None
    family, socktype, proto, _canon, address = infos[0]
    sock = socket.socket(family, socktype, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        on = shown(host, quote=False)
        if exc.errno == errno.EADDRINUSE:
            msg = f"health port {port} on {on} is already in use by another process (choose a free port)"
        elif exc.errno == errno.EACCES:
            msg = f"health port {port} on {on}: permission denied (ports below 1024 need privileges)"
        elif exc.errno == errno.EADDRNOTAVAIL:
            msg = f"health host {shown(host)} is not an address of this machine"
        else:
            msg = f"cannot listen on {on}:{port}: {exc.strerror}"
        raise UsageError(msg) from None
    return sock


def listener_url(host: str, port: int, *, tls: bool = False) -> str:
    """``http://HOST:PORT`` (``https://`` with ``tls``) for a health port (an IPv6 host in brackets)."""
    shown_host = f"[{host}]" if ":" in host else host
    return f"{'https' if tls else 'http'}://{shown_host}:{port}"
