"""Certificates for the TLS tests, made by the ``openssl`` binary, and an HTTPS client for them."""

from __future__ import annotations

import http.client
import socket
import ssl
import subprocess
from pathlib import Path
from typing import NamedTuple


class TlsFiles(NamedTuple):
    cert: Path  # self-signed, for 127.0.0.1 and localhost
    key: Path  # its key
    other_key: Path  # a key that belongs to no certificate here


def make_tls_files(directory: Path) -> TlsFiles:
    """A fresh self-signed P-256 certificate for 127.0.0.1, its key, and an unrelated key."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key, other = directory / "cert.pem", directory / "key.pem", directory / "other-key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost", "-days", "2",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True, timeout=60,
    )
    subprocess.run(
        ["openssl", "genpkey", "-algorithm", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-out", str(other)],
        check=True, capture_output=True, timeout=60,
    )
    return TlsFiles(cert, key, other)


def https_get(
    port: int, path: str, cafile: Path, *, headers: dict[str, str] | None = None, timeout: float = 10.0
) -> tuple[int, bytes]:
    """GET over HTTPS, verifying the server's certificate against ``cafile``."""
    context = ssl.create_default_context(cafile=str(cafile))
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout, context=context)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def plain_exchange(port: int, request: bytes = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n") -> bytes:
    """Send a plain HTTP request to a port, read everything until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                return b"".join(chunks)
            chunks.append(data)
