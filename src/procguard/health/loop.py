"""A single-threaded, non-blocking HTTP server loop (selectors).

Why not ``http.server`` with a thread per connection: one thread and a
selector serve hundreds of idle or slow connections in bounded memory, and
a probe is answered as soon as its request head has arrived, whatever the
other connections are doing. The limits that keep probes answering:

- a connection must deliver its whole request head within
  ``request_timeout`` of being accepted (slowloris), and read its response
  within the same time;
- at most ``max_connections`` are open; past that, the oldest connection
  still sending its head is dropped to make room for the new one;
- every response closes the connection; the socket is half-closed first
  and drained for up to ``LINGER_S`` so that the client reads the response
  rather than a reset.

The same loop runs in a daemon thread of the worker (``mode="thread"``) or
in the responder process (``mode="process"``), see
:mod:`procguard.health.server`; under ``procguard up`` one loop in one
thread of the supervisor serves every port it answers for (the status page
and its command workers' health ports): :meth:`HttpLoop.add_listener` and
:meth:`HttpLoop.remove_listener` add and drop ports while it runs, each
with its own handler.

TLS: a listener added with an :class:`ssl.SSLContext` speaks HTTPS only. The
first byte of each connection says which protocol the client speaks: a TLS
handshake is completed without blocking (within the same deadline as the
request head), anything else is answered in clear with one fixed line, 400
"this port speaks HTTPS", and closed, so nothing of the port's content is
ever served in clear. ``ssl`` is loaded only when such a listener is added.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .protocol import BadRequest, head_complete

if TYPE_CHECKING:
    import ssl

logger = logging.getLogger(__name__)

#: How long a closed-for-writing connection is drained before it is dropped.
LINGER_S = 1.0
#: After stop(), how long connections already accepted may take to finish.
STOP_DRAIN_S = 0.5
_READ_CHUNK = 16 * 1024
_MAX_DISCARD = 64 * 1024

_READING, _WRITING, _LINGERING, _SNIFFING, _HANDSHAKE = 0, 1, 2, 3, 4
#: States of a connection that has not delivered its request head yet.
_ARRIVING = (_SNIFFING, _HANDSHAKE, _READING)
#: The first byte of a TLS record carrying a handshake (a ClientHello).
_TLS_HANDSHAKE_RECORD = 0x16
_PLAIN_BODY = b"this port speaks HTTPS: use https://\n"
#: The only answer a plain HTTP request gets on a TLS port.
PLAIN_REFUSAL = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(_PLAIN_BODY), _PLAIN_BODY)
)


Handler = Callable[[bytes], bytes]


class _Listener:
    __slots__ = ("handle", "sock", "tls")

    def __init__(self, sock: socket.socket, handle: Handler, tls: ssl.SSLContext | None) -> None:
        self.sock = sock
        self.handle = handle
        self.tls = tls


class _Conn:
    __slots__ = ("buf", "deadline", "discarded", "handle", "out", "sock", "state", "tls")

    def __init__(
        self, sock: socket.socket, deadline: float, handle: Handler, tls: ssl.SSLContext | None
    ) -> None:
        self.sock = sock
        self.handle = handle
        self.tls = tls  # the context while the protocol is not settled; None once it is (or plain)
        self.buf = bytearray()
        self.out = b""
        self.state = _READING if tls is None else _SNIFFING
        self.deadline = deadline
        self.discarded = 0


class HttpLoop:
    """Serve ``handle(request_head) -> response_bytes`` on listening sockets.

    ``listener`` (with ``handle``, over TLS with ``tls``) is served from the start; more listeners,
    each with its own handler, come and go with :meth:`add_listener` and
    :meth:`remove_listener` (from any thread, also while serving).

    :meth:`serve` runs until :meth:`stop` is called (from any thread or a
    signal handler) or ``tick()`` returns False; ``tick`` is called about
    every ``tick_interval`` seconds (the responder uses it to notice that
    its worker has gone); ``name`` says which server in log lines. After
    :meth:`stop`, no new connection is accepted and the ones already
    accepted get up to ``STOP_DRAIN_S`` to finish, so a probe in flight
    gets its answer rather than a reset.
    """

    def __init__(
        self,
        listener: socket.socket | None,
        handle: Handler | None = None,
        *,
        max_connections: int = 256,
        request_timeout: float = 5.0,
        tick: Callable[[], bool] | None = None,
        tick_interval: float = 0.5,
        name: str = "health server",
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._listeners: dict[int, _Listener] = {}  # fd -> listener, owned by the serving thread
        self._changes: list[
            tuple[socket.socket, Handler | None, ssl.SSLContext | None, threading.Event | None]
        ] = []
        self._changes_lock = threading.Lock()
        self._serving = False
        #: What a non-blocking socket raises when it must wait (TLS adds its own two).
        self._retry: tuple[type[BaseException], ...] = (BlockingIOError, InterruptedError)
        if listener is not None:
            assert handle is not None, "a listener needs its handler"
            self._changes.append((listener, handle, tls, None))
            self._expect_tls(tls)
        self._name = name
        self._max_connections = max_connections
        self._request_timeout = request_timeout
        self._tick = tick
        self._tick_interval = tick_interval
        self._conns: dict[int, _Conn] = {}  # insertion order = accept order
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._stopping = False

    def stop(self) -> None:
        """Ask :meth:`serve` to return; safe from other threads and signal handlers.

        The listening sockets stay open (their owners close them).
        """
        self._stopping = True
        self._wake()

    def add_listener(
        self, listener: socket.socket, handle: Handler, tls: ssl.SSLContext | None = None
    ) -> None:
        """Serve ``handle`` on ``listener`` too, over TLS with ``tls`` (picked up at once when running)."""
        self._expect_tls(tls)
        with self._changes_lock:
            self._changes.append((listener, handle, tls, None))
        self._wake()

    def _expect_tls(self, tls: ssl.SSLContext | None) -> None:
        if tls is not None and len(self._retry) == 2:
            import ssl  # only once a TLS port exists

            self._retry = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)

    def remove_listener(self, listener: socket.socket, *, timeout: float = 2.0) -> None:
        """Stop accepting on ``listener`` and close it; returns once the port is released.

        Connections already accepted through it still get their answer. Waits
        (up to ``timeout``) for a running loop to let go of the socket, so the
        caller may bind the same port again right after.
        """
        done = threading.Event()
        with self._changes_lock:
            if not self._serving:  # nothing selects on it: close it here
                self._changes = [c for c in self._changes if c[0] is not listener]
                listener.close()
                return
            self._changes.append((listener, None, None, done))
        self._wake()
        done.wait(timeout)

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:  # pipe full (already woken) or closed (already stopped)
            pass

    def _apply_changes(self) -> None:
        with self._changes_lock:
            changes, self._changes = self._changes, []
        for sock, handle, tls, done in changes:
            if handle is not None:
                sock.setblocking(False)
                entry = _Listener(sock, handle, tls)
                self._listeners[sock.fileno()] = entry
                if not self._stopping:
                    self._selector.register(sock, selectors.EVENT_READ, entry)
                continue
            self._listeners.pop(sock.fileno(), None)
            with contextlib.suppress(KeyError, ValueError):  # not registered: stopping already
                self._selector.unregister(sock)
            sock.close()
            if done is not None:
                done.set()

    def serve(self) -> None:
        sel = self._selector
        with self._changes_lock:
            self._serving = True
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._apply_changes()
        next_tick = time.monotonic() + self._tick_interval
        drain_until: float | None = None
        try:
            while True:
                now = time.monotonic()
                if self._stopping:
                    if drain_until is None:
                        drain_until = now + STOP_DRAIN_S
                        for entry in self._listeners.values():
                            with contextlib.suppress(KeyError, ValueError):
                                sel.unregister(entry.sock)
                    if not self._conns or now >= drain_until:
                        break
                wake_at = min(next_tick, self._next_deadline(next_tick))
                if drain_until is not None:
                    wake_at = min(wake_at, drain_until)
                timeout = max(0.0, wake_at - now)
                for key, mask in sel.select(timeout):
                    if isinstance(key.data, _Listener):
                        self._accept(key.data)
                    elif key.data == "wake":
                        self._drain_wake()
                        self._apply_changes()
                    else:
                        self._service(key.data, mask)
                now = time.monotonic()
                self._expire(now)
                if now >= next_tick:
                    next_tick = now + self._tick_interval
                    if self._tick is not None and not self._tick():
                        self._stopping = True
        finally:
            with self._changes_lock:
                self._serving = False
                pending, self._changes = self._changes, []
            for sock, _handle, _tls, done in pending:
                if done is not None:  # a removal the loop did not get to: release the port now
                    sock.close()
                    done.set()
            for fd in list(self._conns):
                self._close(fd)
            sel.close()
            os.close(self._wake_r)
            os.close(self._wake_w)

    # -- connections --------------------------------------------------------

    def _accept(self, listener: _Listener) -> None:
        for _ in range(64):  # bounded batch, then let the others have a turn
            try:
                sock, _addr = listener.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: log, keep serving
                logger.warning("%s cannot accept: %s", self._name, exc)
                return
            if len(self._conns) >= self._max_connections:
                self._evict_one()
            sock.setblocking(False)
            conn = _Conn(sock, time.monotonic() + self._request_timeout, listener.handle, listener.tls)
            self._conns[sock.fileno()] = conn
            self._selector.register(sock, selectors.EVENT_READ, conn)

    def _evict_one(self) -> None:
        """Drop the oldest connection still sending its head (else one already answered)."""
        for states in (_ARRIVING, (_LINGERING,)):
            for fd, conn in self._conns.items():
                if conn.state in states:
                    self._close(fd)
                    return
        self._close(next(iter(self._conns)))

    def _service(self, conn: _Conn, mask: int) -> None:
        fd = conn.sock.fileno()
        if conn.state == _WRITING:
            self._send(conn)
            return
        if conn.state == _SNIFFING:
            self._sniff(conn)
            return
        if conn.state == _HANDSHAKE:
            self._handshake(conn)
            return
        try:
            data = conn.sock.recv(_READ_CHUNK)
        except self._retry:
            return
        except OSError:
            self._close(fd)
            return
        if not data:
            self._close(fd)
            return
        if conn.state == _LINGERING:
            conn.discarded += len(data)
            if conn.discarded > _MAX_DISCARD:
                self._close(fd)
            return
        scanned = len(conn.buf) - 3
        conn.buf += data
        try:
            length = head_complete(conn.buf, scanned)
        except BadRequest as refused:
            self._respond(conn, refused.response.encode())
            return
        if length:
            self._respond(conn, conn.handle(bytes(conn.buf[:length])))

    def _sniff(self, conn: _Conn) -> None:
        """A TLS port's first byte: a handshake goes on in TLS, anything else gets the one refusal."""
        assert conn.tls is not None
        try:
            first = conn.sock.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn.sock.fileno())
            return
        if not first:
            self._close(conn.sock.fileno())
            return
        if first[0] != _TLS_HANDSHAKE_RECORD:
            conn.tls = None
            self._respond(conn, PLAIN_REFUSAL)
            return
        plain = conn.sock
        fd = plain.fileno()
        self._selector.unregister(plain)
        try:
            # The handshake's flights and the answer leave at once, never held back for an ACK.
            plain.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            wrapped = conn.tls.wrap_socket(plain, server_side=True, do_handshake_on_connect=False)
        except (OSError, ValueError) as exc:  # the peer went away meanwhile
            logger.debug("%s: cannot start TLS: %s", self._name, exc)
            self._close(fd)
            return
        conn.tls = None
        conn.sock = wrapped  # same descriptor: the dict key stays right
        conn.state = _HANDSHAKE
        self._selector.register(wrapped, selectors.EVENT_READ, conn)
        self._handshake(conn)

    def _handshake(self, conn: _Conn) -> None:
        import ssl  # loaded already: only TLS connections get here

        sock = conn.sock
        assert isinstance(sock, ssl.SSLSocket)
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            self._selector.modify(sock, selectors.EVENT_READ, conn)
            return
        except ssl.SSLWantWriteError:
            self._selector.modify(sock, selectors.EVENT_WRITE, conn)
            return
        except OSError as exc:  # a failed handshake: nothing was served, nothing to answer
            logger.debug("%s: TLS handshake failed: %s", self._name, exc)
            self._close(sock.fileno())
            return
        conn.state = _READING
        self._selector.modify(sock, selectors.EVENT_READ, conn)
        if sock.pending():
            self._service(conn, selectors.EVENT_READ)

    def _respond(self, conn: _Conn, payload: bytes) -> None:
        conn.buf = bytearray()
        conn.out = payload
        conn.state = _WRITING
        conn.deadline = time.monotonic() + self._request_timeout
        self._send(conn)

    def _send(self, conn: _Conn) -> None:
        fd = conn.sock.fileno()
        try:
            sent = conn.sock.send(conn.out)
        except self._retry:
            sent = 0
        except OSError:
            self._close(fd)
            return
        conn.out = conn.out[sent:]
        if conn.out:
            self._selector.modify(conn.sock, selectors.EVENT_WRITE, conn)
            return
        try:
            if len(self._retry) > 2:  # a TLS port: say close_notify first, where the socket speaks TLS
                self._close_tls(conn.sock)
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(fd)
            return
        conn.state = _LINGERING
        conn.deadline = time.monotonic() + LINGER_S
        self._selector.modify(conn.sock, selectors.EVENT_READ, conn)

    def _close_tls(self, sock: socket.socket) -> None:
        import ssl

        if isinstance(sock, ssl.SSLSocket):
            try:
                sock.unwrap()
            except self._retry:  # close_notify sent; the peer's is not awaited
                pass

    def _next_deadline(self, default: float) -> float:
        if not self._conns:
            return default
        # Connections are in accept order; the oldest reading one expires first
        # in the common case, and _expire scans them all anyway.
        return min(default, *(c.deadline for c in self._conns.values()))

    def _expire(self, now: float) -> None:
        expired = [fd for fd, conn in self._conns.items() if conn.deadline <= now]
        for fd in expired:
            self._close(fd)

    def _close(self, fd: int) -> None:
        conn = self._conns.pop(fd, None)
        if conn is None:
            return
        try:
            self._selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 64):
                pass
        except (BlockingIOError, InterruptedError):
            pass
