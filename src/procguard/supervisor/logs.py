"""Per-worker log files with size rotation, and the prefixed foreground view.

Each worker's stdout and stderr go, line by line, to
``STATE_DIR/logs/PROJECT/WORKER.log`` with a timestamp in front (local time
to the millisecond: ``2026-11-30T09:42:04.123``), rotated at
``log_max_bytes`` into ``WORKER.log.1`` ... ``WORKER.log.N`` (N =
``log_backups``). In the foreground the same lines are printed as
``HH:MM:SS name | text`` (honcho style) so a stack's output reads as one
stream. ``procguard logs`` reads the files directly: it needs no running
supervisor, so the logs of a stack that crashed are still there.

A detached supervisor's own output (its log lines, anything written to its
stdout/stderr) goes to ``STATE_DIR/logs/PROJECT/supervisor.log``, rotated
with the same settings (:func:`log_own_output_to`).

No log is written or read through a symlink: each file is opened with
``O_NOFOLLOW``, and a symlink, a FIFO, a directory or a hard-linked file
found at a log's path is moved aside (renamed, its target untouched) with
one warning line before a fresh 0600 file is created
(:mod:`procguard.instances.statefiles`). The same goes for ``logs/`` and
``logs/PROJECT`` themselves.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from ..instances.statefiles import open_for_reading, open_private, private_dir

#: File name of a detached supervisor's own log, beside its workers' logs.
SUPERVISOR_LOG = "supervisor.log"

#: A line longer than this is cut into pieces rather than buffered forever.
MAX_LINE_BYTES = 64 * 1024


def log_dir(state_dir: Path, project: str, *, create: bool = False) -> Path:
    """``STATE_DIR/logs/PROJECT``; with ``create``, made (0700 at each level), anything else moved aside."""
    if not create:
        return state_dir / "logs" / project
    return private_dir(private_dir(state_dir / "logs") / project)


def log_path(state_dir: Path, project: str, worker: str) -> Path:
    """Where the log of ``worker`` of ``project`` is written."""
    return log_dir(state_dir, project) / f"{worker}.log"


def supervisor_log_path(state_dir: Path, project: str) -> Path:
    """Where a detached supervisor of ``project`` writes its own output."""
    return log_dir(state_dir, project) / SUPERVISOR_LOG


def open_log(path: Path) -> int:
    """A write-only, appending descriptor on the log at ``path``: never through a link, 0600.

    A symlink or anything else that is not a plain file of ours is moved
    aside first, with one warning line.
    """
    return open_private(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, then="writing a fresh log")


class RotatingFile:
    """An append-only file that rotates itself at ``max_bytes`` keeping ``backups`` old files.

    ``on_open(fd)`` is called after each (re)opening, e.g. to point stdout
    and stderr at the new file. With ``shared``, other writers append to the
    same file (through those descriptors), so its size is read before each
    write instead of counted.
    """

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int,
        backups: int,
        on_open: Callable[[int], None] | None = None,
        shared: bool = False,
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._on_open = on_open
        self._shared = shared
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._file = self._open()

    def _open(self) -> BinaryIO:
        fd = open_log(self.path)
        handle = os.fdopen(fd, "ab", buffering=0)
        self._size = os.fstat(fd).st_size
        if self._on_open is not None:
            self._on_open(fd)
        return handle

    def write(self, data: bytes) -> None:
        if self._shared:
            self._size = os.fstat(self._file.fileno()).st_size
        if self.max_bytes and self._size and self._size + len(data) > self.max_bytes:
            self._rotate()
        self._file.write(data)
        self._size += len(data)

    def _rotate(self) -> None:
        """Renames only (a link among the old files is renamed, never followed); the file we write is ours."""
        if self.backups <= 0:
            os.ftruncate(self._file.fileno(), 0)  # the file we opened, not whatever the path names now
        else:
            for index in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{index}")
                if os.path.lexists(older):
                    os.replace(older, self.path.with_name(f"{self.path.name}.{index + 1}"))
            if os.path.lexists(self.path):
                os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._file.close()
        self._file = self._open()

    def close(self) -> None:
        self._file.close()


class _TextLog:
    """The text stream a logging handler writes to, over a :class:`RotatingFile`."""

    def __init__(self, log: RotatingFile) -> None:
        self._log = log

    def write(self, text: str) -> int:
        self._log.write(text.encode(errors="replace"))
        return len(text)

    def flush(self) -> None:
        """Writes are unbuffered: nothing to flush."""


def _become_stdout_and_stderr(fd: int) -> None:
    os.dup2(fd, 1)
    os.dup2(fd, 2)


def log_own_output_to(path: Path, *, max_bytes: int, backups: int) -> RotatingFile:
    """Send this process's output to ``path``, rotated at ``max_bytes`` (``backups`` old files kept).

    For the detached supervisor, whose stdout and stderr are already that
    file: the root logger's stream handlers now write through the rotating
    file, and after each rotation stdout and stderr are pointed at the new
    file, so a traceback or a stray print lands there too and the old file
    is not appended to forever. The CLI calls this (the library never
    configures logging).
    """
    log = RotatingFile(
        path, max_bytes=max_bytes, backups=backups, on_open=_become_stdout_and_stderr, shared=True
    )
    stream = _TextLog(log)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setStream(stream)
    return log


class LineSplitter:
    """Turns chunks read from a pipe into whole lines (keeps the unfinished tail)."""

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        data = self._pending + chunk
        lines = data.split(b"\n")
        self._pending = lines.pop()
        if len(self._pending) > MAX_LINE_BYTES:
            lines.append(self._pending)
            self._pending = b""
        return lines

    def flush(self) -> list[bytes]:
        rest, self._pending = self._pending, b""
        return [rest] if rest else []


class WorkerOutput:
    """Where one worker's lines go: its rotated file and, in the foreground, the terminal."""

    def __init__(
        self,
        name: str,
        log: RotatingFile,
        *,
        terminal: BinaryIO | None,
        width: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.log = log
        self.terminal = terminal
        self._label = name.ljust(width).encode()
        self._clock = clock
        self._splitter = LineSplitter()

    def feed(self, chunk: bytes) -> None:
        self._emit(self._splitter.feed(chunk))

    def flush(self) -> None:
        self._emit(self._splitter.flush())

    def note(self, text: str) -> None:
        """A line from procguard itself about this worker (started, exited ...)."""
        self._emit([f"[procguard] {text}".encode()])

    def _emit(self, lines: list[bytes]) -> None:
        if not lines:
            return
        now = self._clock()
        seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now))
        # Milliseconds, so that the logs of several workers interleave in time order (procguard logs).
        stamp = f"{seconds}.{int((now % 1) * 1000):03d}".encode()
        short = stamp[11:19]
        self.log.write(b"".join(b"%s %s\n" % (stamp, line) for line in lines))
        if self.terminal is not None:
            try:
                self.terminal.write(b"".join(b"%s %s | %s\n" % (short, self._label, line) for line in lines))
                self.terminal.flush()
            except (OSError, ValueError):
                self.terminal = None  # the terminal went away; the log file still has it

    def close(self) -> None:
        self.flush()
        self.log.close()


def tail(path: Path, lines: int) -> list[bytes]:
    """The last ``lines`` lines of ``path`` (fewer if the file is shorter)."""
    if lines <= 0:
        return []
    with os.fdopen(open_for_reading(path), "rb") as handle:
        handle.seek(0, os.SEEK_END)
        end = handle.tell()
        block = 8192
        data = b""
        position = end
        while position > 0 and data.count(b"\n") <= lines:
            step = min(block, position)
            position -= step
            handle.seek(position)
            data = handle.read(step) + data
    result = data.splitlines()
    return result[-lines:]


class _Follower:
    """Reads what is appended to one log file, across rotations, one step at a time (never blocks)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle = os.fdopen(open_for_reading(path), "rb")
        self._handle.seek(0, os.SEEK_END)
        self._inode = os.fstat(self._handle.fileno()).st_ino

    def read(self) -> bytes:
        """What was appended since the last call (b"" when nothing was)."""
        data = self._handle.read()
        if data:
            return data
        try:
            current = os.lstat(self.path)
        except FileNotFoundError:
            return b""
        if current.st_ino != self._inode or current.st_size < self._handle.tell():
            try:
                fd = open_for_reading(self.path)
            except FileNotFoundError:  # between the two renames of a rotation
                return b""
            self._handle.close()
            self._handle = os.fdopen(fd, "rb")
            self._inode = os.fstat(fd).st_ino
            return self._handle.read()
        return b""

    def close(self) -> None:
        self._handle.close()


def follow(
    path: Path, *, poll_s: float = 0.2, keep_going: Callable[[], bool] = lambda: True
) -> Iterator[bytes]:
    """Yield data appended to ``path`` from now on, across rotations, while ``keep_going()``."""
    follower = _Follower(path)
    try:
        while keep_going():
            data = follower.read()
            if data:
                yield data
            else:
                time.sleep(poll_s)
    finally:
        follower.close()
