"""The guardian: a tiny process that stops an instance's leftovers when its runner dies.

The parent-death signal reaches only a *direct* child, and the subreaper
only helps while it is alive. When ``procguard run`` itself is SIGKILLed
(OOM killer, ``kill -9``), a worker's ``multiprocessing`` children would
outlive it -- supervisord, circus and PM2, measured, leave 4 of 4 behind. So the
runner starts a guardian next to the worker:

- it runs in its own session (a terminal's Ctrl-C does not reach it) with
  SIGINT/SIGHUP ignored, and imports nothing but the standard library and
  procguard's small standard-library-only modules (:mod:`procguard.procstat`,
  :mod:`.marker`), so it starts in milliseconds and holds a few MB;
- it opens a pidfd on the runner (verified by start time, so a recycled PID
  is never watched) and sleeps in ``poll()`` -- no timer, no CPU;
- when the runner exits, however it exits, it sends SIGTERM to every
  process of our user carrying the runner's exact ``PROCGUARD_INSTANCE``
  marker (through pidfds opened after checking the marker), waits up to
  grace, SIGKILLs the rest, sweeps once more for anything forked meanwhile,
  and exits. After a clean shutdown there is nothing left to find.

Run as ``python -m procguard.instances.guardian --pid PID --ticks T
--marker NAME:ID --grace S`` (or ``--name NAME... --namespace NS``); start it
with :func:`start_guardian`.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ..procstat import read_stat, start_ticks
from .marker import MARKER_ENV, marker_in_environ, parse_marker

SWEEPS = 3


def start_guardian(
    marker: str | None = None,
    *,
    names: Sequence[str] = (),
    namespace: str | None = None,
    grace_s: float = 5.0,
    watch_pid: int | None = None,
    python: str | None = None,
) -> subprocess.Popen[bytes]:
    """Start a guardian watching ``watch_pid`` (default: this process).

    It sweeps processes carrying exactly ``marker`` (one start of one
    instance, what ``procguard run`` uses) and/or any marker of the state
    directory ``namespace`` whose instance name is in ``names`` (whatever
    random part: what a supervisor restarting its workers under fresh markers
    needs; the namespace keeps it off another state directory's instances of
    the same names). Returns the guardian's ``Popen``; it
    exits by itself after the watched process is gone and the sweep is done.
    Terminate it to stand it down; a guardian stopped by SIGTERM does nothing.
    """
    if marker is None and not names:
        msg = "start_guardian needs a marker or instance names"
        raise ValueError(msg)
    if names and namespace is None:
        msg = "start_guardian: instance names need the namespace of their state directory"
        raise ValueError(msg)
    pid = os.getpid() if watch_pid is None else watch_pid
    ticks = start_ticks(pid)
    env = {k: v for k, v in os.environ.items() if k != MARKER_ENV}
    package_root = str(Path(__file__).resolve().parent.parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    argv = [
        python or sys.executable, "-m", "procguard.instances.guardian",
        "--pid", str(pid), "--ticks", str(ticks if ticks is not None else -1),
        "--grace", repr(float(grace_s)),
    ]
    if marker is not None:
        argv += ["--marker", marker]
    for name in names:
        argv += ["--name", name]
    if names and namespace is not None:
        argv += ["--namespace", namespace]
    return subprocess.Popen(
        argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        start_new_session=True, close_fds=True,
    )


def _wait_for_exit(pid: int, ticks: int | None) -> None:
    """Return once ``pid`` (with start time ``ticks``) has exited."""
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is not None:
        try:
            fd = pidfd_open(pid)
        except ProcessLookupError:
            return
        except OSError:
            fd = None
        if fd is not None:
            try:
                if ticks is not None and start_ticks(pid) != ticks:
                    return  # already gone, and the PID was recycled
                poller = select.poll()
                poller.register(fd, select.POLLIN)
                while not poller.poll(None):
                    pass
                return
            finally:
                os.close(fd)
    # No pidfds: we are the watched process's child, so watch our parent.
    while os.getppid() == pid and (ticks is None or start_ticks(pid) == ticks):
        time.sleep(0.2)


def _selected(environ: bytes, marker: str | None, names: frozenset[str], namespace: str | None) -> bool:
    value = marker_in_environ(environ)
    if value is None:
        return False
    if value == marker:
        return True
    parsed = parse_marker(value)
    return parsed is not None and parsed.name in names and parsed.namespace == namespace


def _marked(
    marker: str | None, names: frozenset[str] = frozenset(), namespace: str | None = None
) -> list[tuple[int, int | None]]:
    """(pid, pidfd) of our user's processes (not us) carrying ``marker`` or a marker of ``names``
    in ``namespace``."""
    me, uid = os.getpid(), os.getuid()
    found: list[tuple[int, int | None]] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        if pid <= 1 or pid == me:
            continue
        try:
            if os.stat(f"/proc/{pid}").st_uid != uid:
                continue
            ticks = start_ticks(pid)
            with open(f"/proc/{pid}/environ", "rb") as f:
                if not _selected(f.read(), marker, names, namespace):
                    continue
        except OSError:
            continue
        fd: int | None = None
        pidfd_open = getattr(os, "pidfd_open", None)
        if pidfd_open is not None:
            try:
                fd = pidfd_open(pid)
            except OSError:
                continue  # exited meanwhile
        if start_ticks(pid) != ticks:  # recycled between the check and the open
            if fd is not None:
                os.close(fd)
            continue
        found.append((pid, fd))
    return found


def _signal(pid: int, fd: int | None, sig: int) -> None:
    try:
        if fd is not None:
            signal.pidfd_send_signal(fd, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _exited(pid: int, fd: int | None) -> bool:
    if fd is not None:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))
    stat = read_stat(pid)
    return stat is None or stat.exited


def sweep(marker: str | None, grace_s: float, names: Sequence[str] = (), namespace: str | None = None) -> int:
    """SIGTERM every process with ``marker`` (or a ``namespace`` marker of ``names``), SIGKILL
    what is left after ``grace_s``; return how many were signalled."""
    stopped = 0
    selected = frozenset(names)
    for _ in range(SWEEPS):
        victims = _marked(marker, selected, namespace)
        if not victims:
            break
        try:
            for pid, fd in victims:
                _signal(pid, fd, signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            alive = victims
            while alive and time.monotonic() < deadline:
                time.sleep(0.02)
                alive = [(pid, fd) for pid, fd in alive if not _exited(pid, fd)]
            for pid, fd in alive:
                _signal(pid, fd, signal.SIGKILL)
            stopped += len(victims)
        finally:
            for _pid, fd in victims:
                if fd is not None:
                    os.close(fd)
    return stopped


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    from ..cli.help_width import sized

    parser = argparse.ArgumentParser(prog="procguard-guardian", formatter_class=sized())
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--ticks", type=int, default=-1)
    parser.add_argument("--marker", default=None)
    parser.add_argument("--name", action="append", default=[])
    parser.add_argument("--namespace", default=None)
    parser.add_argument("--grace", type=float, default=5.0)
    args = parser.parse_args(argv)
    if args.marker is None and not args.name:
        parser.error("give --marker or --name")
    if args.name and args.namespace is None:
        parser.error("--name needs --namespace")
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    _wait_for_exit(args.pid, None if args.ticks < 0 else args.ticks)
    count = sweep(args.marker, max(0.0, args.grace), args.name, args.namespace)
    if count:
        what = args.marker or ", ".join(args.name)
        sys.stderr.write(
            f"procguard guardian: pid {args.pid} exited; stopped {count} leftover process(es) of {what}\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
