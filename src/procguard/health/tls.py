"""TLS for the health ports and the status page, and the bearer token read from a file.

Every file a server needs is checked here before anything starts (``procguard
check``, ``procguard up``, ``procguard run``, ``ProcessManager.start``): a
certificate or key that is missing, unreadable, not PEM, or a key that does
not belong to the certificate, and a token file that cannot be read, are one
line naming the file and what is wrong (:class:`~procguard.errors.UsageError`,
exit status 2), never a failure at the first probe.

``ssl`` (with OpenSSL, a few MB) is imported by this module only, and this
module only where TLS or a token file is configured: a plain health port
loads none of it.
"""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING

from ..errors import UsageError, shown

if TYPE_CHECKING:
    import ssl

    from ..config import StackConfig

#: What a PEM certificate and a PEM private key start with.
_CERT_MARK = b"-----BEGIN CERTIFICATE-----"
_KEY_MARK = b"PRIVATE KEY-----"


def _read(path: str, what: str) -> bytes:
    """The bytes of ``path``; UsageError naming ``what`` and the file when it cannot be read."""
    where = f"{what}: {shown(path)}"
    try:
        with open(path, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                msg = f"{where} is not a regular file"
                raise UsageError(msg)
            return handle.read(1 << 20)
    except FileNotFoundError:
        msg = f"{where} does not exist"
        raise UsageError(msg) from None
    except PermissionError:
        msg = f"{where} cannot be read (permission denied)"
        raise UsageError(msg) from None
    except IsADirectoryError:
        msg = f"{where} is a directory, not a file"
        raise UsageError(msg) from None
    except OSError as error:
        msg = f"{where} cannot be read ({error.strerror})"
        raise UsageError(msg) from None


def server_context(
    cert: str, key: str, *, keys: tuple[str, str] = ("health_tls_cert", "health_tls_key")
) -> ssl.SSLContext:
    """A server-side TLS context (TLS 1.2 or later) for ``cert`` and its ``key``.

    ``keys`` names the two settings in messages (``status_tls_cert`` for the
    status page). Raises :class:`UsageError` with one line for every file
    problem, before any socket is served.
    """
    cert_key, key_key = keys
    if _CERT_MARK not in _read(cert, cert_key):
        msg = f"{cert_key}: {shown(cert)} is not a PEM certificate (no BEGIN CERTIFICATE line)"
        raise UsageError(msg)
    if _KEY_MARK not in _read(key, key_key):
        msg = f"{key_key}: {shown(key)} is not a PEM private key (no BEGIN PRIVATE KEY line)"
        raise UsageError(msg)
    import ssl  # only here: a plain port never loads OpenSSL

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # The session tickets OpenSSL sends right after the handshake are kept although nothing
    # resumes (every answer closes its connection): they also acknowledge the client's Finished at
    # once. Without them a client with Nagle's algorithm on (Python's sockets) holds its request
    # back until the delayed ACK, 40 ms later (measured: /health p50 3 ms -> 47 ms).
    try:
        context.load_cert_chain(cert, key, password=_no_password)
    except ssl.SSLError as error:
        if "KEY_VALUES_MISMATCH" in str(error) or error.reason == "KEY_VALUES_MISMATCH":
            msg = f"{key_key}: {shown(key)} does not match the certificate {shown(cert)}"
        else:
            reason = error.reason or error
            msg = f"{cert_key}/{key_key}: {shown(cert)} and {shown(key)} cannot be loaded ({reason})"
        raise UsageError(msg) from None
    except (OSError, TypeError, ValueError) as error:
        msg = f"{key_key}: {shown(key)} cannot be loaded ({error}; an encrypted key is not supported)"
        raise UsageError(msg) from None
    return context


def _no_password() -> str:
    # Called by OpenSSL only for an encrypted key: refuse it rather than prompt on a terminal.
    msg = "the key is encrypted"
    raise ValueError(msg)


def read_token_file(path: str, *, what: str = "health_token_file") -> str:
    """The bearer token in ``path`` (surrounding whitespace and the final newline removed).

    An empty file is refused: it would leave /metrics open while the
    operator believes it is guarded.
    """
    data = _read(path, what)
    try:
        token = data.decode().strip()
    except UnicodeDecodeError:
        msg = f"{what}: {shown(path)} is not UTF-8 text"
        raise UsageError(msg) from None
    if not token:
        msg = f"{what}: {shown(path)} is empty (put the token in it)"
        raise UsageError(msg)
    if any(ch.isspace() for ch in token):
        msg = f"{what}: {shown(path)} holds more than one word (a bearer token has no spaces)"
        raise UsageError(msg)
    return token


def check_files(cert: str | None, key: str | None, token_file: str | None) -> None:
    """Check a worker's TLS and token files now (what ``check``, ``up`` and ``run`` do first)."""
    if cert is not None and key is not None:
        server_context(cert, key)
    if token_file is not None:
        read_token_file(token_file)


def check_stack(config: StackConfig) -> None:
    """Every TLS and token file a stack names, checked now (``procguard check`` and ``up``)."""
    project = config.project
    if project.status_tls_cert is not None and project.status_tls_key is not None:
        try:
            keys = ("status_tls_cert", "status_tls_key")
            server_context(project.status_tls_cert, project.status_tls_key, keys=keys)
        except UsageError as error:
            msg = f"{config.path}: project.{error}"
            raise UsageError(msg) from None
    for worker in config.workers.values():
        limits = worker.limits
        try:
            check_files(limits.health_tls_cert, limits.health_tls_key, limits.health_token_file)
        except UsageError as error:
            msg = f"{config.path}: workers.{worker.name}.{error}"
            raise UsageError(msg) from None
