"""Helpers shared by the test workers (standard library only)."""

from __future__ import annotations

import os


def append_line(path: str, text: str) -> None:
    """Append one line; O_APPEND writes of a short line are atomic."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, (text + "\n").encode())
    finally:
        os.close(fd)


def write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)
