"""One instance per name: a kernel lock held for the worker's whole life.

``InstanceLock.acquire("collector")`` takes ``flock(LOCK_EX | LOCK_NB)`` on
``<state>/instances/collector.lock``. The kernel drops the lock the instant
the holder dies, however it dies (SIGKILL, OOM kill, power cut of the
process), so a stale file can never block a start: there is no pidfile to
clean up and the lock file is never unlinked (unlinking a lock file lets two
processes lock two different inodes under one name).

The fd is opened ``O_CLOEXEC`` (not inherited across exec) and closed in
fork children through :func:`os.register_at_fork`, so a ``multiprocessing``
child that outlives its parent never keeps the lock alive (the flaw that
makes naive flock-based tools refuse restarts until the orphans are found).

The file also holds a JSON record of the holder: pid, start time (ticks and
create_time), boot id, command line, health port, marker and free-form
``info``. The record is advice for humans and for ``procguard ps``/
``cleanup``; the lock alone decides who runs. Poisoned records (pid 0, -1,
1, text, huge, another user's pid) are never trusted: a PID is only acted
on when the lock is held *and* the recorded identity still matches.

A lock file with more than one hard link is another file too (someone's
``ln``): writing the record would overwrite that file. The lock is still
taken (single-instance must hold, and a start is never refused for what is
in the state directory), but no record is written, truncated or read
through it; one warning names the file, and ``procguard ps`` shows the
instance without its details.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ..errors import AlreadyRunningError, StateDirError
from ..procstat import start_ticks
from .identity import ProcessIdentity, boot_id, create_time
from .marker import validate_name
from .statedir import open_state_file, resolve_state_dir, state_subdir
from .statefiles import private_dir

if TYPE_CHECKING:
    import psutil

log = logging.getLogger(__name__)

INSTANCES_SUBDIR = "instances"
LOCK_SUFFIX = ".lock"
#: Records larger than this are poison, not data.
MAX_RECORD_BYTES = 64 * 1024
RECORD_VERSION = 1

#: Every lock held by this process, so fork children can drop their copies.
_HELD: weakref.WeakSet[InstanceLock] = weakref.WeakSet()
_HELD_GUARD = threading.Lock()


def _drop_inherited_locks() -> None:
    """In a fork child: close inherited lock fds (the parent keeps its lock)."""
    for lock in list(_HELD):
        lock._forget_in_child()
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_inherited_locks)


def lock_path(name: str, state_dir: str | os.PathLike[str] | None = None, *, create: bool = True) -> Path:
    """Where the lock file of instance ``name`` lives (the name is validated).

    With ``create``, whatever stands where ``instances/`` belongs and is not a
    private directory of ours (a symlink, a file, a directory others may
    write) is moved aside or tightened with one warning line, never a reason
    to refuse a start; without, it is refused (a reader changes nothing).
    """
    validate_name(name)
    base = resolve_state_dir(state_dir, create=create)
    if create:
        return private_dir(base / INSTANCES_SUBDIR) / f"{name}{LOCK_SUFFIX}"
    return state_subdir(base, INSTANCES_SUBDIR, create=False) / f"{name}{LOCK_SUFFIX}"


class InstanceLock:
    """The held single-instance lock of one name; release it (or exit) to free it.

    >>> with InstanceLock.acquire("collector", info={"restarts": 0}) as lock:  # doctest: +SKIP
    ...     run_worker()

    A second ``acquire`` of the same name, from any process, raises
    :class:`~procguard.errors.AlreadyRunningError` naming the holder's PID.
    """

    def __init__(self, name: str, path: Path, fd: int, record: dict[str, Any]) -> None:
        self.name = name
        self.path = path
        self._fd: int | None = fd
        self._record = record
        self._owner_pid = os.getpid()
        self._write_guard = threading.Lock()  # update() may come from any thread
        self._warned_links = False

    # -- acquiring -------------------------------------------------------
    @classmethod
    def acquire(
        cls,
        name: str,
        *,
        state_dir: str | os.PathLike[str] | None = None,
        info: Mapping[str, Any] | None = None,
        health_port: int | None = None,
        marker: str | None = None,
    ) -> InstanceLock:
        """Take the lock of ``name`` or raise AlreadyRunningError naming the holder.

        ``info`` is stored in the record (JSON-serialisable values); the
        runner/supervisor put ``restarts``, the worker's pid, etc. there.
        Stopping a running holder first (``--replace``) is a policy one level
        up: :func:`procguard.instances.replace.acquire_instance`.
        """
        path = lock_path(name, state_dir)
        fd = _open_lock_file(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe_holder(fd, path)
            os.close(fd)
            raise AlreadyRunningError(
                name,
                holder,
                f"stop it with 'procguard cleanup {name}' or start with --replace",
            ) from None
        except BaseException:
            os.close(fd)
            raise
        return cls._adopt(name, path, fd, info, health_port, marker)

    @classmethod
    def _adopt(  # noqa: PLR0917 - private
        cls,
        name: str,
        path: Path,
        fd: int,
        info: Mapping[str, Any] | None,
        health_port: int | None,
        marker: str | None,
    ) -> InstanceLock:
        me = os.getpid()
        created = create_time(me)  # from /proc: holding a lock needs no psutil (1.2 MB RSS)
        if created is None:  # pragma: no cover - no /proc
            import psutil

            try:
                created = float(psutil.Process(me).create_time())
            except psutil.Error:
                created = time.time()
        info_dict = dict(info or {})
        if health_port is None and isinstance(info_dict.get("health_port"), int):
            health_port = info_dict["health_port"]
        record: dict[str, Any] = {
            "version": RECORD_VERSION,
            "name": name,
            "pid": me,
            "create_time": created,
            "start_ticks": start_ticks(me),
            "boot_id": boot_id(),
            "cmdline": list(sys.orig_argv) if hasattr(sys, "orig_argv") else list(sys.argv),
            "health_port": health_port,
            "marker": marker,
            "started_at": time.time(),
            "info": info_dict,
        }
        lock = cls(name, path, fd, record)
        with _HELD_GUARD:
            _HELD.add(lock)
        try:
            lock._write()
        except BaseException:
            lock.release()
            raise
        log.debug("acquired instance lock %s (pid %s)", path, me)
        return lock

    # -- the record ------------------------------------------------------
    @property
    def record(self) -> dict[str, Any]:
        """A copy of the JSON record stored in the lock file."""
        return json.loads(json.dumps(self._record))

    @property
    def held(self) -> bool:
        return self._fd is not None

    @property
    def fd(self) -> int | None:
        """The locked file descriptor (None once released)."""
        return self._fd

    def update(
        self,
        info: Mapping[str, Any] | None = None,
        *,
        health_port: int | None = None,
        marker: str | None = None,
    ) -> None:
        """Merge ``info`` into the record (and set health port / marker), then rewrite it."""
        with self._write_guard:
            if info:
                self._record["info"].update(info)
            if health_port is not None:
                self._record["health_port"] = health_port
            if marker is not None:
                self._record["marker"] = marker
            self._write()

    def _write(self) -> None:
        fd = self._fd
        if fd is None or not self._writable(fd):
            return
        data = json.dumps(self._record, sort_keys=True, default=str).encode()
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))

    def _writable(self, fd: int) -> bool:
        """False (and one warning) while the lock file has more than one hard link."""
        links = os.fstat(fd).st_nlink
        if links <= 1:
            return True
        if not self._warned_links:
            self._warned_links = True
            log.warning(
                "lock file %s has %d hard links (it is another file too): the lock is held, "
                "but no record is written to it",
                self.path,
                links,
            )
        return False

    # -- releasing -------------------------------------------------------
    def release(self) -> None:
        """Free the lock (idempotent). The file stays: lock files are never unlinked."""
        with self._write_guard:
            fd, self._fd = self._fd, None
        if fd is None:
            return
        with _HELD_GUARD:
            _HELD.discard(self)
        if os.getpid() != self._owner_pid:  # pragma: no cover - forked without the hook
            os.close(fd)
            return
        try:
            if self._writable(fd):
                os.ftruncate(fd, 0)  # an empty record says "nobody" to readers
        except OSError:
            pass
        os.close(fd)  # closing our only reference frees the flock
        log.debug("released instance lock %s", self.path)

    def _forget_in_child(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> InstanceLock:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "held" if self.held else "released"
        return f"<InstanceLock {self.name!r} {state} pid={self._record.get('pid')}>"


def _open_lock_file(path: Path) -> int:
    """Open (create) the lock file without following symlinks.

    A symlink planted at the lock path cannot be a held lock of ours (we
    never follow one), so it is removed -- the link, never its target -- and
    a private file created in its place.
    """
    flags = os.O_RDWR | os.O_CREAT
    try:
        return open_state_file(path, flags)
    except StateDirError:
        if not os.path.islink(path):
            raise
    log.warning("lock file %s is a symlink; removing the link and creating a real file", path)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    return open_state_file(path, flags)


# -- reading ----------------------------------------------------------------
@dataclass(frozen=True)
class InstanceRecord:
    """What the lock file of one name says, and whether anyone holds the lock.

    ``held``: the kernel lock is held right now. ``live``: held, and the
    recorded (pid, start time, boot id) names a running process -- the only
    case in which the recorded PID may be signalled.
    """

    name: str
    path: Path
    held: bool
    holder_pid: int | None = None
    data: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def identity(self) -> ProcessIdentity | None:
        """The recorded holder's identity if the record is well-formed and from this boot."""
        if not self.data:
            return None
        recorded_boot = self.data.get("boot_id")
        current_boot = boot_id()
        if recorded_boot and current_boot and recorded_boot != current_boot:
            return None
        return ProcessIdentity.from_json(self.data)

    @property
    def pid(self) -> int | None:
        ident = self.identity
        return ident.pid if ident else None

    @property
    def live(self) -> bool:
        ident = self.identity
        return self.held and ident is not None and ident.matches()

    def process(self) -> psutil.Process | None:
        """The holder as a psutil.Process when :attr:`live`, else None."""
        if not self.held:
            return None
        ident = self.identity
        return ident.process() if ident else None

    @property
    def marker(self) -> str | None:
        value = self.data.get("marker")
        return value if isinstance(value, str) else None

    @property
    def health_port(self) -> int | None:
        port = self.data.get("health_port")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            return None
        return port

    @property
    def started_at(self) -> float | None:
        value = self.data.get("started_at")
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    @property
    def cmdline(self) -> list[str]:
        value = self.data.get("cmdline")
        return [str(v) for v in value] if isinstance(value, list) else []

    @property
    def info(self) -> Mapping[str, Any]:
        value = self.data.get("info")
        return value if isinstance(value, dict) else {}


def _proc_locks() -> dict[tuple[int, int, int], int] | None:
    """Held flock locks as {(major, minor, inode): pid}, from /proc/locks.

    Reading /proc/locks never takes a lock itself, so ``procguard ps`` cannot
    make a concurrent start fail. None when /proc/locks is unavailable.
    """
    try:
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    held: dict[tuple[int, int, int], int] = {}
    for line in lines:
        parts = line.split()
        if "->" in parts or "FLOCK" not in parts:
            continue  # "->" marks a blocked waiter, not a holder
        i = parts.index("FLOCK")
        try:
            pid = int(parts[i + 3])
            major, minor, inode = parts[i + 4].split(":")
            held[(int(major, 16), int(minor, 16), int(inode))] = pid
        except (IndexError, ValueError):
            continue
    return held


def _lock_state(fd: int, locks: dict[tuple[int, int, int], int] | None) -> tuple[bool, int | None]:
    """(held, holder pid) for the open lock file ``fd``."""
    st = os.fstat(fd)
    if locks is not None:
        key = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
        if key in locks:
            return True, (locks[key] or None)
        return False, None
    # No /proc/locks: probe. A shared lock only conflicts with a start for
    # the instant it is held.
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True, None
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False, None


def _read_data(fd: int) -> tuple[dict[str, Any], str | None]:
    raw = os.pread(fd, MAX_RECORD_BYTES + 1, 0)
    if not raw:
        return {}, None
    if len(raw) > MAX_RECORD_BYTES:
        return {}, f"record larger than {MAX_RECORD_BYTES} bytes; ignored"
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return {}, "record is not JSON; ignored"
    if not isinstance(data, dict):
        return {}, "record is not a JSON object; ignored"
    return data, None


def _describe_holder(fd: int, path: Path) -> int | None:
    """Best PID to name in 'already running': the recorded one if it checks out."""
    record = _read_record(path.stem, path, fd, _proc_locks())
    if record.live:
        return record.pid
    return record.holder_pid


def _read_record(
    name: str, path: Path, fd: int, locks: dict[tuple[int, int, int], int] | None
) -> InstanceRecord:
    held, holder = _lock_state(fd, locks)
    links = os.fstat(fd).st_nlink
    if links > 1:  # another file's content, not a record: never read as one
        linked = f"lock file has {links} hard links; no record is kept in it"
        return InstanceRecord(name=name, path=path, held=held, holder_pid=holder, error=linked)
    data, error = _read_data(fd)
    # A holder rewrites its record with pwrite+ftruncate; a reader racing it
    # may see a torn record. Re-read a couple of times before calling it bad.
    for _ in range(3):
        if error is None or not held:
            break
        time.sleep(0.01)
        data, error = _read_data(fd)
    return InstanceRecord(name=name, path=path, held=held, holder_pid=holder, data=data, error=error)


def read_instance(name: str, state_dir: str | os.PathLike[str] | None = None) -> InstanceRecord | None:
    """The record of instance ``name``, or None if it never ran (no lock file)."""
    path = lock_path(name, state_dir, create=False)
    return _read_path(name, path, _proc_locks())


def _read_path(
    name: str, path: Path, locks: dict[tuple[int, int, int], int] | None
) -> InstanceRecord | None:
    try:
        fd = open_state_file(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    except StateDirError as error:
        return InstanceRecord(name=name, path=path, held=False, error=error.problem)
    except OSError as error:
        if error.errno in (errno.ENOENT, errno.ENOTDIR):
            return None
        return InstanceRecord(name=name, path=path, held=False, error=error.strerror)
    try:
        return _read_record(name, path, fd, locks)
    finally:
        os.close(fd)


def list_instances(state_dir: str | os.PathLike[str] | None = None) -> list[InstanceRecord]:
    """Records of every instance name with a lock file, sorted by name.

    Includes stale records (``held`` False); filter on ``held``/``live``.
    """
    base = resolve_state_dir(state_dir, create=False)
    directory = state_subdir(base, INSTANCES_SUBDIR, create=False) if base.exists() else base
    if not directory.is_dir():
        return []
    locks = _proc_locks()
    records: list[InstanceRecord] = []
    for path in sorted(directory.glob(f"*{LOCK_SUFFIX}")):
        name = path.name[: -len(LOCK_SUFFIX)]
        record = _read_path(name, path, locks)
        if record is not None:
            records.append(record)
    return records
