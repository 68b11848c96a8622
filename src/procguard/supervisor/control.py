"""The control channel of a running supervisor: a unix socket in the state directory.

``procguard status/stop/start/restart/down`` talk to the supervisor of a
stack through ``STATE_DIR/supervisor.PROJECT.sock`` (mode 0600, in the 0700
state directory): nothing listens on a network port, and only the user who
owns the state directory can connect (unlike supervisord's XML-RPC over
HTTP, which has had remote-code-execution flaws). The protocol is one JSON object per line each way:

    -> {"cmd": "status"}                  <- {"ok": true, "workers": [...]}
    -> {"cmd": "stop", "name": "api"}     <- {"ok": true, "message": "..."}
    -> {"cmd": "down"}                    <- {"ok": true, ...}; then the socket
                                             closes when the supervisor has exited
    <- {"ok": false, "error": "...", "exit_status": 2}   on a bad request

The server side is non-blocking and lives in the supervisor's own event
loop (no thread); the client is a plain blocking socket with a timeout.

:func:`running_supervisors` finds the supervisors that run on a state
directory from their instance locks (``supervisor.PROJECT``, held by the
kernel for the supervisor's life, recording the project and the absolute
path of its ``procguard.toml``), so the control commands work from any shell
without ``-c``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import socket
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ProcguardError

logger = logging.getLogger(__name__)

#: Longest path a unix socket address can hold on Linux, minus the NUL.
_MAX_ADDRESS = 107
_MAX_REQUEST = 64 * 1024


#: Instance-lock name prefix of a stack's supervisor: ``supervisor.PROJECT``.
LOCK_PREFIX = "supervisor."


class NotRunningError(ProcguardError):
    """No supervisor runs for this stack. Exit status 3, as LSB's "program is not running".

    ``project`` is None when no stack was named and none runs on the state
    directory ``path`` at all.
    """

    exit_status = 3

    def __init__(self, project: str | None, path: Path) -> None:
        self.project = project
        self.path = path
        if project is None:
            message = f"no supervisor is running in state directory {path} (start one with 'procguard up')"
        else:
            message = f"no supervisor is running for stack {project!r} (start it with 'procguard up')"
        super().__init__(message)


def socket_path(state_dir: Path, project: str) -> Path:
    return state_dir / f"supervisor.{project}.sock"


@dataclass(frozen=True)
class RunningSupervisor:
    """A supervisor holding its stack's lock right now, as its lock record describes it.

    ``config`` is the absolute path of the ``procguard.toml`` it was started
    with (None in a record written before it was recorded, or a damaged one).
    """

    project: str
    pid: int | None
    config: Path | None


def running_supervisors(state_dir: Path) -> list[RunningSupervisor]:
    """The supervisors whose lock is held on ``state_dir``, sorted by project.

    The kernel lock decides (a supervisor killed with SIGKILL drops it at
    once), so the list never names a dead stack. Locks of other instances
    (``procguard run`` workers) are ignored, as is a held lock whose record
    does not name a project (a supervisor caught between taking its lock and
    writing the record).
    """
    from ..instances.lock import list_instances

    found: list[RunningSupervisor] = []
    for record in list_instances(state_dir):
        if not record.held or not record.name.startswith(LOCK_PREFIX):
            continue
        project = record.info.get("project")
        if not isinstance(project, str) or record.name != LOCK_PREFIX + project:
            continue
        config = record.info.get("config")
        found.append(
            RunningSupervisor(
                project=project,
                pid=record.pid or record.holder_pid,
                config=Path(config) if isinstance(config, str) and os.path.isabs(config) else None,
            )
        )
    return sorted(found, key=lambda s: s.project)


@contextlib.contextmanager
def _address(path: Path) -> Iterator[str]:
    """A unix-socket address for ``path``, short enough for the kernel.

    Long state directories (deep temp dirs) exceed the 108-byte limit of
    ``sun_path``; then the directory is opened and addressed through
    ``/proc/self/fd/N/``, which the kernel resolves like the real path.
    """
    text = str(path)
    if len(text.encode()) <= _MAX_ADDRESS:
        yield text
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


class Peer:
    """One client connection: the handler answers through it, now or later."""

    def __init__(self, conn: socket.socket, on_close: Callable[[socket.socket], None]) -> None:
        self._conn = conn
        self._on_close = on_close

    def send(self, obj: dict[str, Any], *, close: bool = True) -> None:
        """Send one reply line; keep the connection open with ``close=False``."""
        try:
            self._conn.setblocking(True)
            self._conn.settimeout(2.0)
            self._conn.sendall(json.dumps(obj).encode() + b"\n")
        except OSError as error:
            logger.debug("control: reply lost: %s", error)
        if close:
            self.close()

    def close(self) -> None:
        self._on_close(self._conn)


Handler = Callable[[dict[str, Any], Peer], None]


def _make_room(path: Path) -> None:
    """Clear the socket's path before binding it.

    A socket there is a dead supervisor's (we hold the stack's lock): removed.
    Anything else (a file, a directory, a symlink) is moved aside with one
    warning line, so that nothing planted there can stop a start.
    """
    from ..instances.statefiles import UNSAFE, lstat_or_none, move_aside

    st = lstat_or_none(path)
    if st is None:
        return
    if stat.S_ISSOCK(st.st_mode):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    problem = "is a symlink" if stat.S_ISLNK(st.st_mode) else "is not a socket"
    move_aside(path, why=UNSAFE, problem=problem, then="listening on a fresh socket", expect=st)


class ControlServer:
    """Listens on the control socket inside a ``selectors`` loop.

    ``handler(request, peer)`` is called in the loop for each request; it
    answers with ``peer.send(obj)`` now or later (``down`` sends an
    acknowledgement with ``close=False``: the client's connection then
    closes when the supervisor exits, which is how ``procguard down`` knows
    that everything has stopped).
    """

    def __init__(self, path: Path, handler: Handler, selector: selectors.BaseSelector) -> None:
        self.path = path
        self._handler = handler
        self._selector = selector
        _make_room(path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.set_inheritable(False)
        with _address(path) as address:
            self._sock.bind(address)
        os.chmod(path, 0o600, follow_symlinks=False)
        self._sock.listen(16)
        self._sock.setblocking(False)
        self._connections: dict[socket.socket, bytearray] = {}
        selector.register(self._sock, selectors.EVENT_READ, self._accept)

    def _accept(self) -> None:
        try:
            conn, _ = self._sock.accept()
        except OSError:
            return
        conn.setblocking(False)
        self._connections[conn] = bytearray()
        self._selector.register(conn, selectors.EVENT_READ, lambda: self._read(conn))

    def _read(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        buffer = self._connections.get(conn)
        if buffer is None:
            return
        if not data:
            self._drop(conn)
            return
        buffer += data
        if b"\n" not in buffer:
            if len(buffer) > _MAX_REQUEST:
                self._drop(conn)
            return
        line = bytes(buffer.split(b"\n", 1)[0])
        self._selector.unregister(conn)  # one request per connection
        peer = Peer(conn, self._close)
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError("not an object")
        except ValueError:
            peer.send({"ok": False, "error": "bad request (use one JSON object per line)", "exit_status": 2})
            return
        self._handler(request, peer)

    def _drop(self, conn: socket.socket) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(conn)
        self._close(conn)

    def _close(self, conn: socket.socket) -> None:
        self._connections.pop(conn, None)
        conn.close()

    def close(self) -> None:
        """Stop listening and remove the socket file (open connections close with the process)."""
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(self._sock)
        self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def request(path: Path, payload: dict[str, Any], *, project: str, timeout: float = 10.0) -> dict[str, Any]:
    """Send one request and return the reply; :class:`NotRunningError` if nobody listens."""
    sock = connect(path, project=project, timeout=timeout)
    with sock:
        sock.sendall(json.dumps(payload).encode() + b"\n")
        data = _read_line(sock)
    if not data:
        raise NotRunningError(project, path)
    reply = json.loads(data)
    if not isinstance(reply, dict):
        raise NotRunningError(project, path)
    return reply


def connect(path: Path, *, project: str, timeout: float = 10.0) -> socket.socket:
    """A connected client socket, or :class:`NotRunningError`."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        with _address(path) as address:
            sock.connect(address)
    except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
        sock.close()
        raise NotRunningError(project, path) from None
    except OSError:
        sock.close()
        raise
    return sock


def _read_line(sock: socket.socket) -> bytes:
    data = bytearray()
    while b"\n" not in data:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return bytes(data.split(b"\n", 1)[0])


def wait_closed(sock: socket.socket, timeout: float) -> bool:
    """Read ``sock`` until the peer closes it (True) or ``timeout`` passes (False)."""
    sock.settimeout(timeout)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    except OSError:
        return True
    return True
