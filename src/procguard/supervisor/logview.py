"""Reading several workers' logs as one stream: ``procguard logs`` without a name, or with a pattern.

Each line of a worker's log starts with its time (``2026-11-30T09:42:04.123``,
local time, written by :class:`.logs.WorkerOutput`), so the logs of several
workers are merged by that time; lines of one worker keep their order
(a line whose time cannot be read sorts with the one before it). Each line
is shown behind its worker's name, padded so the texts align (honcho's
``name | text``). With ``--follow`` the files are polled together and new
lines printed as they come, across rotations, and a worker whose log
appears later (started later, added by a reload) is picked up.

Pure where it can be: :func:`merge` and :func:`since_stamp` read no file.
"""

from __future__ import annotations

import datetime
import heapq
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from ..errors import UsageError, shown
from ..instances.statefiles import open_for_reading
from ..units import parse_duration
from .logs import LineSplitter, tail

#: The time at the start of every log line: ``YYYY-MM-DDTHH:MM:SS``, then ``.mmm`` (earlier versions: none).
_STAMP_LEN = len("2026-11-30T09:42:04")

#: ANSI colours for the names, in turn (on a terminal, unless NO_COLOR is set).
_COLOURS = (36, 33, 32, 35, 34, 31)

Line = tuple[str, bytes]


def stamp_of(line: bytes) -> bytes | None:
    """The time a log line starts with, as written (sortable as bytes), or None."""
    first = line.split(b" ", 1)[0]
    if len(first) >= _STAMP_LEN and first[:4].isdigit() and first[10:11] == b"T":
        return first
    return None


def since_stamp(text: str, *, now: float | None = None) -> bytes:
    """``--since``: a duration back from now (``10m``, ``90s``, ``2h``) or a time (ISO 8601), as a
    log stamp to compare lines with. UsageError (one line) otherwise."""
    try:
        seconds = parse_duration(text, what="--since")
    except UsageError:
        seconds = None
    if seconds is not None:
        moment = (time.time() if now is None else now) - seconds
        return _stamp(moment)
    try:
        when = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        msg = (
            f"--since: {shown(text)} is not a duration or a time "
            "(use e.g. 10m, 90s, 2h, 2026-11-30T09:42 or '2026-11-30 09:42:04')"
        )
        raise UsageError(msg) from None
    if when.tzinfo is not None:
        return _stamp(when.timestamp())
    return when.strftime("%Y-%m-%dT%H:%M:%S.%f")[:23].encode()


def _stamp(moment: float) -> bytes:
    local = time.localtime(moment)
    millis = int((moment % 1) * 1000)
    return (time.strftime("%Y-%m-%dT%H:%M:%S", local) + f".{millis:03d}").encode()


def _keyed(name: str, lines: Iterable[bytes]) -> Iterator[tuple[bytes, str, bytes]]:
    last = b""
    for line in lines:
        last = stamp_of(line) or last
        yield last, name, line


def merge(
    logs: Sequence[tuple[str, Sequence[bytes]]], *, lines: int | None, since: bytes | None = None
) -> list[Line]:
    """The lines of several logs, in time order (stable per log), the last ``lines`` of them
    (None: all), none older than ``since``."""
    streams = [_keyed(name, content) for name, content in logs]
    merged = heapq.merge(*streams, key=lambda item: item[0])
    chosen = [(name, line) for key, name, line in merged if since is None or key >= since]
    if lines is not None:
        chosen = chosen[-lines:] if lines > 0 else []
    return chosen


def read_log(path: Path, *, lines: int | None) -> list[bytes]:
    """The last ``lines`` lines of a log (None: all of it); [] when there is no file."""
    try:
        if lines is not None:
            return tail(path, lines)
        with os.fdopen(open_for_reading(path), "rb") as handle:
            return handle.read().splitlines()
    except FileNotFoundError:
        return []


class Prefixer:
    """``name | `` in front of each line, names padded to one width, coloured when asked."""

    def __init__(self, names: Sequence[str], *, colour: bool) -> None:
        self._width = max((len(n) for n in names), default=0)
        self._colour = colour
        self._labels: dict[str, bytes] = {}

    def __call__(self, name: str, line: bytes) -> bytes:
        label = self._labels.get(name)
        if label is None:
            self._width = max(self._width, len(name))
            text = f"{name.ljust(self._width)} |"
            if self._colour:
                code = _COLOURS[len(self._labels) % len(_COLOURS)]
                text = f"\x1b[{code}m{text}\x1b[0m"
            label = self._labels[name] = text.encode()
        return label + b" " + line + b"\n"


class _Followed:
    """One log followed from its end: new whole lines, across rotations (never through a link)."""

    def __init__(self, path: Path, *, from_start: bool) -> None:
        self.path = path
        self._splitter = LineSplitter()
        fd = open_for_reading(path)
        self._handle = os.fdopen(fd, "rb")
        if not from_start:
            self._handle.seek(0, os.SEEK_END)
        self._inode = os.fstat(fd).st_ino

    def read(self) -> list[bytes]:
        lines: list[bytes] = []
        data = self._handle.read()
        if data:
            lines += self._splitter.feed(data)
        try:
            current = os.lstat(self.path)
        except FileNotFoundError:
            return lines
        if current.st_ino != self._inode or current.st_size < self._handle.tell():
            try:
                fd = open_for_reading(self.path)
            except FileNotFoundError:  # between the two renames of a rotation
                return lines
            rest = self._handle.read()  # what was written to the old file before it moved
            lines += self._splitter.feed(rest)
            self._handle.close()
            self._handle = os.fdopen(fd, "rb")
            self._inode = os.fstat(fd).st_ino
        return lines

    def close(self) -> None:
        self._handle.close()


def follow_logs(
    paths: Callable[[], dict[str, Path]],
    emit: Callable[[list[Line]], None],
    *,
    poll_s: float = 0.2,
    keep_going: Callable[[], bool] = lambda: True,
) -> None:
    """Print what is appended to the logs ``paths()`` names (asked again at each poll, so logs
    that appear later are followed from their first line), each poll's lines in time order."""
    followed: dict[str, _Followed] = {}
    first = True
    try:
        while keep_going():
            for name, path in paths().items():
                if name not in followed:
                    try:
                        followed[name] = _Followed(path, from_start=not first)
                    except FileNotFoundError:
                        continue
            first = False
            batch = merge([(name, f.read()) for name, f in followed.items()], lines=None)
            if batch:
                emit(batch)
            else:
                time.sleep(poll_s)
    finally:
        for f in followed.values():
            f.close()
