"""Files procguard writes in the state directory: never through a link, hostile ones moved aside.

The state directory itself is checked when it is resolved (0700, ours, not a
symlink), but what is inside it can still be wrong: a symlink planted at a
log's path (writing through it appends to, or truncates, whatever it points
at), a second hard link to some other file, a directory or a FIFO where a
file belongs, a file another user owns. None of that may stop a start, and
nothing may be written through it. So:

- a file procguard writes is opened with ``O_NOFOLLOW`` and checked on its
  descriptor (:func:`open_private`); it must be a regular file of ours with
  exactly one link, and it is made 0600;
- anything else at its path is *moved aside*: the name itself is renamed
  to ``NAME.unsafe-<UTC time>`` (a symlink is renamed, its target is never
  opened or touched), with one warning line naming both, and a fresh
  private file is created in its place. Nothing is deleted: a moved-aside
  file stays for inspection.

Directories of ours inside the state directory (``logs/`` and its per-stack
directories) get the same treatment from :func:`private_dir`.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
import time
from collections.abc import Sequence
from pathlib import Path

from ..errors import ProcguardError
from ..reasons import ExitStatus

logger = logging.getLogger(__name__)

#: Suffix word of a moved-aside path that was not a plain file of ours (symlink, FIFO, hard link ...).
UNSAFE = "unsafe"
#: Suffix word of a moved-aside file whose content is damaged (see the history).
CORRUPT = "corrupt"

FILE_MODE = 0o600
DIR_MODE = 0o700

#: How often a path that keeps changing under us is looked at again before giving up.
_ATTEMPTS = 5


class UnsafeFileError(ProcguardError):
    """A file in the state directory cannot be used safely, and nothing safe can be done. Exit status 2."""

    exit_status = ExitStatus.USAGE

    def __init__(self, path: Path, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path} {problem}")


def file_problem(st: os.stat_result) -> str | None:
    """Why a file with status ``st`` (from ``lstat``) must not be written, or None if it may."""
    if stat.S_ISLNK(st.st_mode):
        return "is a symlink"
    if stat.S_ISDIR(st.st_mode):
        return "is a directory"
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    if st.st_nlink != 1:
        return f"has {st.st_nlink} hard links"
    if st.st_uid != os.geteuid():
        return f"is owned by uid {st.st_uid}, not by you"
    return None


def identity(st: os.stat_result) -> tuple[int, int]:
    """(device, inode): what a path named when it was looked at."""
    return st.st_dev, st.st_ino


def lstat_or_none(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def aside_path(path: Path, why: str, now: float | None = None) -> Path:
    """A free name beside ``path``: ``NAME.<why>-<UTC time>`` (``.1``, ``.2`` ... if taken)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    base = f"{path.name}.{why}-{stamp}"
    candidate = path.with_name(base)
    index = 0
    while os.path.lexists(candidate):
        index += 1
        candidate = path.with_name(f"{base}.{index}")
    return candidate


def move_aside(
    path: Path,
    *,
    why: str,
    problem: str,
    then: str,
    expect: os.stat_result | None = None,
    companions: Sequence[str] = (),
) -> Path | None:
    """Rename ``path`` (never what it points to) aside; log one warning line; return the new path.

    ``expect``: only if ``path`` still names that file (else None: someone
    else dealt with it). ``companions``: suffixes of files that belong to it
    (``-wal``), moved along to the same new name plus their suffix. ``then``
    says what happens next, for the warning line.
    """
    if expect is not None:
        now_st = lstat_or_none(path)
        if now_st is None or identity(now_st) != identity(expect):
            return None
    target = aside_path(path, why)
    try:
        os.rename(path, target)
    except FileNotFoundError:
        return None
    for suffix in companions:
        with_suffix = path.with_name(path.name + suffix)
        if os.path.lexists(with_suffix):
            try:
                os.rename(with_suffix, target.with_name(target.name + suffix))
            except FileNotFoundError:
                pass
    logger.warning("%s %s; moved it aside to %s, %s", path, problem, target.name, then)
    return target


def open_private(path: Path, flags: int, *, then: str = "writing a fresh file") -> int:
    """``os.open`` of a file of ours in the state directory, for writing: no link followed, 0600.

    Whatever is at ``path`` and is not a regular file of ours with one link
    is moved aside first (:func:`move_aside`, one warning line) and a fresh
    file created (``flags`` should include ``O_CREAT``). The descriptor is
    close-on-exec. Raises :class:`UnsafeFileError` if the path keeps being
    replaced; other ``OSError`` (no space, permission) propagate.
    """
    for _ in range(_ATTEMPTS):
        before = lstat_or_none(path)
        if before is not None:
            problem = file_problem(before)
            if problem is not None:
                move_aside(path, why=UNSAFE, problem=problem, then=then, expect=before)
                continue
        try:
            # O_NONBLOCK: a FIFO swapped in after the lstat must not hang the open.
            fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, FILE_MODE)
        except OSError as error:
            if error.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO, errno.EEXIST):
                continue  # replaced since the lstat: judge it again
            raise
        try:
            st = os.fstat(fd)
            if file_problem(st) is not None:
                os.close(fd)
                continue  # judged (and moved aside) by the next round
            if stat.S_IMODE(st.st_mode) != FILE_MODE:
                os.fchmod(fd, FILE_MODE)
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        except BaseException:
            os.close(fd)
            raise
        return fd
    raise UnsafeFileError(path, "keeps being replaced while it is opened; not writing to it")


def open_for_reading(path: Path) -> int:
    """``os.open`` of a file of ours for reading, without following a link.

    Raises FileNotFoundError when there is none, :class:`UnsafeFileError`
    when the path is a symlink or not a regular file (a reader moves
    nothing; the next writer does).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise UnsafeFileError(path, "is a symlink; not following it") from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise UnsafeFileError(path, "is not a regular file; not reading it")
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    return fd


def private_dir(path: Path) -> Path:
    """``path``, a directory of ours inside the state directory: created 0700 if missing.

    A symlink, a file or a directory of another user at ``path`` is moved
    aside (one warning line) and a fresh directory made; a directory of ours
    that group or others may write is made 0700 (one warning line).
    """
    for _ in range(_ATTEMPTS):
        st = lstat_or_none(path)
        if st is None:
            try:
                os.mkdir(path, DIR_MODE)
            except FileExistsError:
                continue  # made by a concurrent start: judge it
            try:
                os.chmod(path, DIR_MODE, follow_symlinks=False)  # mkdir's mode went through the umask
            except (OSError, NotImplementedError):
                continue  # replaced already: judge it
            return path
        if stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid():
            loose = stat.S_IMODE(st.st_mode)
            if loose & (stat.S_IWGRP | stat.S_IWOTH):
                try:
                    os.chmod(path, DIR_MODE, follow_symlinks=False)
                except (OSError, NotImplementedError):
                    continue  # replaced since the lstat: judge it again
                logger.warning("%s was writable by group or others (mode %04o); made it 0700", path, loose)
            return path
        if stat.S_ISLNK(st.st_mode):
            problem = "is a symlink"
        elif stat.S_ISDIR(st.st_mode):
            problem = f"is a directory owned by uid {st.st_uid}, not by you"
        else:
            problem = "is not a directory"
        move_aside(path, why=UNSAFE, problem=problem, then="making a fresh directory", expect=st)
    raise UnsafeFileError(path, "keeps being replaced while it is created; not using it")
