"""The ``PROCGUARD_INSTANCE`` marker: which instance, of which state directory, a process belongs to.

Every process procguard starts carries ``PROCGUARD_INSTANCE=<name>:<id>`` in
its environment and passes it on to all its descendants. The id is
``<namespace>-<random>``: the namespace is the state directory's (see
:func:`procguard.instances.statedir.namespace_of`), so two stacks that use
the same names in two state directories can tell their processes apart,
and one start of an instance is told from the next by the random part.

A marker whose id has no namespace (written by procguard before namespaces
existed) names no state directory: nothing that acts on one state
directory's processes (``cleanup NAME``, the stale sweep of ``up``,
``--replace``) ever signals it.

Standard library only, and light: a standalone runner imports it and must stay a few MB.
"""

from __future__ import annotations

import os
import re
from typing import NamedTuple

from ..errors import UsageError
from ..procstat import read_proc

MARKER_ENV = "PROCGUARD_INSTANCE"
_MARKER_PREFIX = MARKER_ENV.encode() + b"="

#: Instance names: what fits in a file name and a marker without quoting.
NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:@+-]{0,127}\Z")
_NAME_ACCEPTED = "letters, digits and . _ : @ + -, starting with a letter, digit or _, at most 128 characters"

#: A namespace id: 8 lowercase hex digits.
NAMESPACE_RE = re.compile(r"[0-9a-f]{8}\Z")


def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid instance name, else raise UsageError."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise UsageError(f"instance name {name!r} is not valid (use {_NAME_ACCEPTED})")
    return name


class Marker(NamedTuple):
    """A parsed marker value: ``name`` and ``ident`` (``"<namespace>-<random>"``)."""

    name: str
    ident: str

    @property
    def namespace(self) -> str | None:
        """The state directory's namespace id, or None for a marker without one."""
        namespace, sep, rest = self.ident.partition("-")
        if not sep or not rest or not NAMESPACE_RE.match(namespace):
            return None
        return namespace

    def __str__(self) -> str:
        return f"{self.name}:{self.ident}"


def new_marker(name: str, namespace: str, *, run: str = "") -> str:
    """A fresh marker ``"<name>:<namespace>-<run><random>"`` for one start of instance ``name``.

    ``namespace`` is the id of the state directory the instance locks in
    (:func:`procguard.instances.statedir.namespace_of`); ``run`` (hex digits,
    from :func:`new_run`) is shared by every marker one supervisor gives out,
    so what that supervisor started can be found as a whole
    (:func:`run_pattern`) once it is gone.
    """
    validate_name(name)
    if not NAMESPACE_RE.match(namespace):
        msg = f"namespace {namespace!r} is not 8 lowercase hex digits"
        raise ValueError(msg)
    if run and not _RUN_RE.match(run):
        msg = f"run {run!r} is not hex digits"
        raise ValueError(msg)
    return f"{name}:{namespace}-{run}{os.urandom(6).hex()}"  # not secrets: it loads libcrypto (3 MB RSS)


_RUN_RE = re.compile(r"[0-9a-f]{1,16}\Z")


def new_run() -> str:
    """A fresh run id: what one supervisor's markers share (see :func:`new_marker`)."""
    return os.urandom(4).hex()


def run_pattern(project: str, namespace: str, run: str) -> str:
    """A grep (basic regex, one NUL-separated environment entry per line) that matches the marker of
    every process one supervisor of ``project`` started (``run``), its descendants included."""
    checks = ((project, r"[A-Za-z0-9_-]+\Z"), (namespace, NAMESPACE_RE.pattern), (run, _RUN_RE.pattern))
    for part, pattern in checks:
        if not re.match(pattern, part):
            msg = f"{part!r} cannot be part of a marker pattern"
            raise ValueError(msg)
    # PROJECT.WORKER, or PROJECT.WORKER:K for copy K of a worker (see procguard.copies).
    return f"^{MARKER_ENV}={project}\\.[^:]*\\(:[0-9][0-9]*\\)\\{{0,1\\}}:{namespace}-{run}"


def exact_pattern(marker: str) -> str:
    """A grep (basic regex, one NUL-separated environment entry per line) that matches exactly the
    environment entry of ``marker``: one start of one instance, its descendants included."""
    parsed = parse_marker(marker)
    if parsed is None or not re.fullmatch(r"[0-9a-zA-Z_-]+", parsed.ident):
        msg = f"{marker!r} is not a marker"
        raise ValueError(msg)
    escaped = "".join("\\" + c if c in ".[]*^$\\" else c for c in marker)
    return f"^{MARKER_ENV}={escaped}$"


def parse_marker(value: str) -> Marker | None:
    """The marker in ``value`` (name and id), or None if it is not one of ours."""
    name, sep, ident = value.rpartition(":")
    if not sep or not ident or not NAME_RE.match(name):
        return None
    return Marker(name, ident)


def inherited_marker(name: str, namespace: str, environ: dict[str, str] | None = None) -> str | None:
    """The marker this process was started with, if it is one for instance ``name`` in ``namespace``.

    A worker that ``procguard up`` starts gets its marker from the
    supervisor (with the supervisor's run id, so its watchdog finds every
    descendant), and a runner started again to carry its marker (see
    :mod:`procguard.runner.reexec`) finds it here: either way it is kept,
    not replaced by a new one.
    """
    value = (os.environ if environ is None else environ).get(MARKER_ENV)
    marker = None if value is None else parse_marker(value)
    if marker is None or marker.name != name or marker.namespace != namespace:
        return None
    return str(marker)


def read_marker(pid: int) -> str | None:
    """The ``PROCGUARD_INSTANCE`` value in ``/proc/PID/environ``, or None.

    Unreadable (another user's process, a kernel thread, a zombie) means None.
    """
    data = read_proc(pid, "environ")
    return None if data is None else marker_in_environ(data)


def marker_in_environ(environ: bytes) -> str | None:
    """The ``PROCGUARD_INSTANCE`` value in a NUL-separated environment block, or None."""
    for entry in environ.split(b"\0"):
        if entry.startswith(_MARKER_PREFIX):
            return entry[len(_MARKER_PREFIX) :].decode("utf-8", "replace")
    return None
