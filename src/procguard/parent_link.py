"""A supervised process's link to the procguard process that started it.

``procguard up`` gives every worker it starts one end of a socket pair
(``SOCK_SEQPACKET``: one message per datagram, never torn) and names its
file descriptor in ``PROCGUARD_LINK_FD``. Over it:

- the supervisor sends the worker's settings first (``procguard run`` takes
  its :class:`~procguard.limits.WorkerLimits` from them, as a value, with
  no command-line text in between), and, right before it sends SIGTERM for
  a stop it decided, a *stop note* saying why: so the worker can tell the
  supervisor's stop (``stopped``, ``liveness``, ...) from a signal sent from
  outside procguard (``external_signal``), and its last log line reads the
  same reason as the supervisor's ``status``;
- the worker reports the helper processes procguard starts beside it
  (never counted in its memory), the process that is really the worker
  (``procguard run``'s command), a stop it decided itself as soon as it
  decides it (so the supervisor shows it stopping and does not decide the
  same stop a second time), and its stop outcome, just before it exits.

A process claims the link once (:func:`claim`); claiming removes
``PROCGUARD_LINK_FD`` from the environment and makes the descriptor
non-inheritable, so the worker's own children never see it. A process
started without one (standalone ``procguard run``, a ProcessManager program
run by hand) has no link and reports nothing.

Messages are one JSON object each, ``{"kind": value}``, through
:func:`encode` / :func:`decode` on both ends.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from .deferred_log import get_logger
from .outcome import StopOutcome
from .reasons import Ender, StopReason, signal_name

if TYPE_CHECKING:
    import socket

log = get_logger(__name__)  # logging loads on the first message

LINK_ENV = "PROCGUARD_LINK_FD"
#: Largest message either end sends or reads.
MAX_MESSAGE = 64 * 1024

SETTINGS, STOP, HELPER, WORKER_PID, STOPPING, OUTCOME, HEALTH = (
    "settings", "stop", "helper", "worker_pid", "stopping", "outcome", "health"
)


class HealthMapping:
    """Where to publish health snapshots: descriptor ``fd`` (``size`` bytes) for the port ``port``."""

    __slots__ = ("fd", "port", "size")

    def __init__(self, fd: int, size: int, port: int) -> None:
        self.fd = fd
        self.size = size
        self.port = port

    def to_json(self) -> dict[str, int]:
        return {"fd": self.fd, "size": self.size, "port": self.port}

    @classmethod
    def from_json(cls, value: Any) -> HealthMapping | None:
        if not isinstance(value, dict):
            return None
        fields: list[int] = []
        for key in ("fd", "size", "port"):
            field = value.get(key)
            if not isinstance(field, int) or isinstance(field, bool) or field < 0:
                return None
            fields.append(field)
        fd, size, port = fields
        return cls(fd, size, port)


def encode(kind: str, value: Any) -> bytes:
    """One message: ``{"kind": value}`` as compact JSON."""
    return json.dumps({kind: value}, separators=(",", ":")).encode()


def decode(data: bytes) -> tuple[str, Any] | None:
    """``(kind, value)`` of one message, or None when it is not one (never raises)."""
    try:
        message = json.loads(data.decode())
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(message, dict) or len(message) != 1:
        return None
    ((kind, value),) = message.items()
    return str(kind), value


class ParentLink:
    """This process's end of the link (see the module docstring); get it with :func:`claim`."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._settings: Any = None
        self._health: HealthMapping | None = None
        self._health_taken = False
        self._notes: list[StopOutcome] = []
        self._pid = os.getpid()

    def _pump(self) -> None:
        """Read every message waiting from the supervisor (never blocks)."""
        import socket

        while True:
            try:
                data = self._sock.recv(MAX_MESSAGE, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if not data:
                return
            message = decode(data)
            if message is None:
                continue
            kind, value = message
            if kind == SETTINGS:
                self._settings = value
            elif kind == HEALTH:
                self._health = HealthMapping.from_json(value)
            elif kind == STOP:
                note = StopOutcome.from_json(value)
                if note is not None:
                    self._notes.append(note)

    def settings(self) -> Any:
        """The settings the supervisor sent (the JSON of a WorkerLimits), or None."""
        self._pump()
        return self._settings

    def health_mapping(self, port: int) -> HealthMapping | None:
        """The mapping to publish health snapshots into when the supervisor serves ``port``, or None.

        Taken once (the first ProcessManager of the process with that port
        publishes); the descriptor is made non-inheritable, so the worker's
        own children never hold it.
        """
        self._pump()
        mapping = self._health
        if mapping is None or self._health_taken or mapping.port != port:
            return None
        try:
            os.set_inheritable(mapping.fd, False)
        except OSError:
            log.debug("parent link: health mapping fd %s is not open", mapping.fd)
            return None
        self._health_taken = True
        return mapping

    def take_stop_note(self) -> StopOutcome | None:
        """The reason of the stop the supervisor is asking for right now, or None (then a signal
        came from outside procguard). Consumes the note."""
        self._pump()
        if not self._notes:
            return None
        note, self._notes = self._notes[-1], []
        return note

    def report_helper(self, pid: int) -> None:
        """``pid`` is procguard's helper (health responder): not part of the worker's figures."""
        self._send(HELPER, pid)

    def report_worker_pid(self, pid: int) -> None:
        """``pid`` is the worker itself (``procguard run``'s command): its tree is the worker's."""
        self._send(WORKER_PID, pid)

    def report_stopping(self, decided: StopOutcome) -> None:
        """The worker decided to stop (a limit, its loop ended): the supervisor waits, sends nothing."""
        self._send(STOPPING, decided.to_json())

    def report_outcome(self, outcome: StopOutcome) -> None:
        """How and why this worker is about to exit (call it last, before exiting)."""
        self._send(OUTCOME, outcome.to_json())

    def _send(self, kind: str, value: Any) -> None:
        import socket

        if os.getpid() != self._pid:
            return  # a forked child: the link belongs to the parent
        try:
            self._sock.send(encode(kind, value), socket.MSG_DONTWAIT)
        except OSError as error:  # the supervisor is gone or not reading: nothing to tell
            log.debug("parent link: cannot send %s: %s", kind, error)


def stop_for_signal(signum: int, link: ParentLink | None) -> StopOutcome:
    """The stop a stop signal asks for, as the worker that received it decides it.

    Under a supervisor (``link``): the reason of the supervisor's note, when
    it sent one right before the signal, else ``external_signal`` (nobody in
    procguard asked for it). Standalone: ``signal``.
    """
    name = signal_name(signum)
    note = link.take_stop_note() if link is not None else None
    if note is not None:
        return StopOutcome.decided(note.reason, note.detail, by=note.by, signum=signum, figures=note.figures)
    if link is not None:
        return StopOutcome.decided(
            StopReason.EXTERNAL_SIGNAL, f"{name} from outside procguard", by=Ender.OUTSIDE, signum=signum
        )
    return StopOutcome.decided(StopReason.SIGNAL, f"received {name}", by=Ender.OUTSIDE, signum=signum)


_LINK: ParentLink | None = None
_CLAIMED = False


def claim() -> ParentLink | None:
    """This process's link to its supervisor, or None when it was not started with one.

    The first call takes it from the environment; later calls return the
    same link (the runner and the ProcessManager inside it share it).
    """
    global _LINK, _CLAIMED
    if _CLAIMED:
        return _LINK
    _CLAIMED = True
    text = os.environ.pop(LINK_ENV, "")
    if not text.isdigit():
        return None
    fd = int(text)
    import socket  # here: a standalone runner has no link and never loads socket

    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        log.debug("parent link: fd %s is not a socket", fd)
        return None
    if sock.type != socket.SOCK_SEQPACKET:
        sock.detach()  # not ours to close
        return None
    sock.set_inheritable(False)
    _LINK = ParentLink(sock)
    return _LINK


def _forget_in_child() -> None:
    global _LINK, _CLAIMED
    _LINK, _CLAIMED = None, True  # a fork child is not the supervised worker


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)
