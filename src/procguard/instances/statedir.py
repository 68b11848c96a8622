"""The state directory: where instance locks, records and history live.

Lookup order: an explicit ``--state-dir``, then
``$PROCGUARD_STATE_DIR``, then ``$XDG_RUNTIME_DIR/procguard``, then a
per-user directory under the temp dir (``procguard-<uid>``).

The state directory is also a namespace: :func:`namespace_of` derives a
short id from its real path, every process procguard starts carries it in
its marker, and whatever acts on one state directory's processes (the stale
sweep of ``procguard up``, ``cleanup NAME|all``, ``--replace``) touches
only processes whose marker carries that id. Two stacks with the same names
in two state directories never stop each other's workers.

The directory decides who may stop whom, so it is checked like sshd checks
``~/.ssh``: created 0700, and refused when it is a symlink, owned by another
user, or writable by group or others. Anything that could let another local
user plant a lock record (and have ``procguard cleanup`` signal a PID of
their choosing) is refused with a message that says how to fix it. Files
inside are opened with ``O_NOFOLLOW`` and created 0600.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from ..errors import StateDirError

log = logging.getLogger(__name__)

STATE_DIR_ENV = "PROCGUARD_STATE_DIR"

#: Flags for every file procguard opens in the state directory.
SAFE_OPEN_FLAGS = os.O_CLOEXEC | os.O_NOFOLLOW
FILE_MODE = 0o600
DIR_MODE = 0o700


def default_state_dir() -> Path:
    """The state directory the environment asks for (not created, not checked)."""
    explicit = os.environ.get(STATE_DIR_ENV)
    if explicit:
        return Path(explicit).expanduser()
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        return Path(runtime) / "procguard"
    import tempfile  # only for this fallback (it pulls in random, shutil)

    return Path(tempfile.gettempdir()) / f"procguard-{os.geteuid()}"


def _requested_path(explicit: str | os.PathLike[str] | None) -> Path:
    """The absolute state directory asked for: ``explicit``, else the environment's."""
    path = Path(explicit).expanduser() if explicit not in (None, "") else default_state_dir()
    return Path(os.path.abspath(path))


def namespace_of(state_dir: str | os.PathLike[str] | None = None) -> str:
    """The namespace id of a state directory: 8 hex digits of the SHA-256 of its real path.

    ``state_dir`` is resolved like :func:`resolve_state_dir` resolves it
    (None: the one the environment asks for), then made canonical, so two
    spellings of one directory (a symlinked parent, ``..``) are one
    namespace. Nothing is created or checked.
    """
    real = os.path.realpath(_requested_path(state_dir))
    return _sha256_hex(os.fsencode(real))[:8]


def _sha256_hex(data: bytes) -> str:
    """SHA-256 from the interpreter's own implementation when it has one.

    ``hashlib`` loads OpenSSL's libcrypto (3.6 MB of RSS measured) into the
    supervisor, which computes a namespace once and never hashes again; the
    built-in module gives the same digest without it.
    """
    try:
        from _sha256 import sha256  # CPython up to 3.11
    except ImportError:
        try:
            from _sha2 import sha256  # CPython 3.12+
        except ImportError:
            from hashlib import sha256
    return str(sha256(data).hexdigest())


def resolve_state_dir(explicit: str | os.PathLike[str] | None = None, *, create: bool = True) -> Path:
    """Return the state directory, created 0700 if needed and checked.

    ``explicit`` (from ``--state-dir``) wins over the environment. With
    ``create=False`` a missing directory is returned as is (read-only
    commands such as ``procguard ps`` need not create anything).

    Raises :class:`~procguard.errors.StateDirError` when the path is a
    symlink, not a directory, owned by another user, or group/world-writable.
    """
    path = _requested_path(explicit)
    if create:
        _make_private_dir(path)
    elif not os.path.lexists(path):
        return path
    check_private_dir(path)
    return path


def state_subdir(state_dir: Path, name: str, *, create: bool = True) -> Path:
    """``state_dir/name`` (e.g. ``instances``), created 0700 and checked like the state dir."""
    path = state_dir / name
    if create:
        _make_private_dir(path)
    elif not os.path.lexists(path):
        return path
    check_private_dir(path)
    return path


def _make_private_dir(path: Path) -> None:
    if os.path.lexists(path):
        return
    parent = path.parent
    if not parent.exists():
        # Intermediate directories get the same private mode.
        try:
            parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        except OSError as error:
            raise StateDirError(str(path), f"cannot create parent directory: {error.strerror}") from None
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        return  # a concurrent start created it; check_private_dir judges it
    except OSError as error:
        raise StateDirError(str(path), f"cannot create: {error.strerror}") from None
    # mkdir's mode is filtered by the umask; make it exactly 0700.
    os.chmod(path, DIR_MODE, follow_symlinks=False)
    log.debug("created state directory %s", path)


def check_private_dir(path: Path) -> None:
    """Raise :class:`StateDirError` unless ``path`` is a real directory only we can write."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise StateDirError(str(path), "does not exist") from None
    except OSError as error:
        raise StateDirError(str(path), f"cannot inspect: {error.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise StateDirError(
            str(path), "is a symlink; refusing to follow it (point --state-dir at the real directory)"
        )
    if not stat.S_ISDIR(st.st_mode):
        raise StateDirError(str(path), "is not a directory")
    uid = os.geteuid()
    if st.st_uid != uid:
        raise StateDirError(
            str(path), f"is owned by uid {st.st_uid}, not by you (uid {uid}); use your own --state-dir"
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise StateDirError(
            str(path),
            f"is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}); run: chmod 700 {path}",
        )


def open_state_file(path: Path, flags: int, *, mode: int = FILE_MODE) -> int:
    """``os.open`` for a file inside the state directory: no symlinks, close-on-exec, 0600.

    Raises :class:`StateDirError` when ``path`` is a symlink or not a
    regular file owned by us; other ``OSError`` propagate.
    """
    try:
        fd = os.open(path, flags | SAFE_OPEN_FLAGS, mode)
    except OSError:
        if os.path.islink(path):
            raise StateDirError(str(path), "is a symlink; refusing to follow it") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise StateDirError(str(path), "is not a regular file")
        if st.st_uid != os.geteuid():
            raise StateDirError(str(path), f"is owned by uid {st.st_uid}, not by you")
    except BaseException:
        os.close(fd)
        raise
    return fd
