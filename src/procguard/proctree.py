"""Process-tree helpers: find descendants, measure a tree, stop processes safely.

Everything that may send a signal here works on :class:`psutil.Process`
objects, never on bare PIDs: a ``psutil.Process`` remembers the start time of
the process it was created for, and before a signal is sent the identity is
checked again, so a PID that was recycled by an unrelated process is never
hit. Where the kernel offers pidfds (Linux 5.3+), the signal goes through a
pidfd opened after that check, which closes the last gap between "check" and
"kill", and the wait for exit is a ``poll()`` on those pidfds instead of a
sleep loop.

The stop schedule is the one every peer converged on (psutil's
``wait_procs`` recipe, gunicorn's arbiter, supervisord's stopwaitsecs):
SIGTERM to all, wait up to ``grace_s``, SIGKILL to whatever is left, wait
again. pid <= 1, the calling process and its ancestors are never signalled.
"""

from __future__ import annotations

import enum
import logging
import os
import select
import signal
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import psutil

log = logging.getLogger(__name__)

#: How long to wait for processes to vanish after SIGKILL (the kernel needs
#: only milliseconds; this bounds the wait for processes stuck in D state).
KILL_WAIT_S = 5.0


class StopResult(str, enum.Enum):
    """What happened to one process asked to stop. Values appear in JSON reports."""

    TERMINATED = "terminated"  # exited after the polite signal, within grace
    KILLED = "killed"  # needed SIGKILL
    ALREADY_GONE = "already_gone"  # had exited (or its PID was recycled) before we signalled
    DENIED = "denied"  # EPERM: not ours to signal
    PROTECTED = "protected"  # pid <= 1, ourselves or an ancestor: never signalled
    SURVIVED = "survived"  # still alive after SIGKILL and the kill wait

    def __str__(self) -> str:
        return self.value


#: Results that mean "no longer running".
GONE_RESULTS = frozenset({StopResult.TERMINATED, StopResult.KILLED, StopResult.ALREADY_GONE})


@dataclass(frozen=True)
class StopOutcome:
    """One process and what :func:`stop_processes` did to it."""

    process: psutil.Process
    result: StopResult
    detail: str = ""

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def gone(self) -> bool:
        return self.result in GONE_RESULTS


def descendants(pid: int | psutil.Process) -> list[psutil.Process]:
    """All live descendants of ``pid`` (children first, then theirs), or [] if it is gone."""
    try:
        root = pid if isinstance(pid, psutil.Process) else psutil.Process(pid)
        return list(root.children(recursive=True))
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return []
    except psutil.AccessDenied:
        return []


def process_tree(pid: int | psutil.Process) -> list[psutil.Process]:
    """``pid`` itself followed by its descendants ([] if it is gone)."""
    try:
        root = pid if isinstance(pid, psutil.Process) else psutil.Process(pid)
    except psutil.NoSuchProcess:
        return []
    return [root, *descendants(root)]


def tree_memory_bytes(pid: int | psutil.Process, *, include_children: bool = True) -> int:
    """Resident memory (RSS) of ``pid`` plus, by default, all its descendants, in bytes.

    Processes that vanish or deny access while being measured count as 0:
    a memory figure is an estimate, never a reason to fail.
    """
    procs = process_tree(pid) if include_children else process_tree(pid)[:1]
    total = 0
    for proc in procs:
        try:
            total += int(proc.memory_info().rss)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return total


def protected_pids() -> frozenset[int]:
    """PIDs this process must never signal: 0, 1, itself and all its ancestors.

    The ancestors include the shell that started us, so ``procguard cleanup
    --match sh`` cannot take down the terminal it was typed in.
    """
    pids = {0, 1, os.getpid()}
    try:
        pids.update(p.pid for p in psutil.Process().parents())
    except psutil.Error:
        # Fall back on the parent we know of; better to protect too little
        # of the chain than to fail the caller.
        pids.add(os.getppid())
    return frozenset(pids)


def is_gone(proc: psutil.Process) -> bool:
    """True once ``proc`` has exited: not running, PID recycled, or a zombie.

    Zombies are not reaped here: if ``proc`` is our child its exit status
    belongs to whoever owns it (a ``subprocess.Popen``, multiprocessing, or
    :func:`procguard.instances.childproc.reap_children`). A zombie holds no memory
    and runs no code, so for stopping purposes it is gone.
    """
    try:
        if not proc.is_running():  # exited and reaped, or the PID now belongs to someone else
            return True
        return bool(proc.status() == psutil.STATUS_ZOMBIE)
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return True
    except psutil.AccessDenied:
        return False


class _Handle:
    """A process we are stopping: its psutil object plus, when available, a pidfd."""

    __slots__ = ("fd", "proc")

    def __init__(self, proc: psutil.Process) -> None:
        self.proc = proc
        self.fd: int | None = _open_pidfd(proc)

    def send(self, sig: int) -> StopResult | None:
        """Send ``sig``; return a final result if the process turned out gone or not ours."""
        try:
            if self.fd is not None:
                signal.pidfd_send_signal(self.fd, sig)
            else:
                self.proc.send_signal(sig)  # checks (pid, create time) first
        except (ProcessLookupError, psutil.NoSuchProcess):
            return StopResult.ALREADY_GONE
        except (PermissionError, psutil.AccessDenied):
            return StopResult.DENIED
        return None

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _open_pidfd(proc: psutil.Process) -> int | None:
    """A pidfd for ``proc`` if it is still the process psutil saw, else None.

    Opening the pidfd *then* re-checking the identity proves the fd refers to
    the process we mean: if the PID had been recycled before the open, the
    start time would differ now.
    """
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None or not hasattr(signal, "pidfd_send_signal"):
        return None
    try:
        fd = int(pidfd_open(proc.pid))
    except OSError:
        return None
    try:
        if proc.is_running():
            return fd
    except psutil.Error:
        pass
    os.close(fd)
    return None


def _wait(handles: list[_Handle], deadline: float) -> list[_Handle]:
    """Wait until every handle's process is gone or ``deadline`` passes; return the living."""
    alive = list(handles)
    while True:
        alive = [h for h in alive if not is_gone(h.proc)]
        remaining = deadline - time.monotonic()
        if not alive or remaining <= 0:
            return alive
        fds = [h.fd for h in alive if h.fd is not None]
        timeout = min(remaining, 0.05 if len(fds) < len(alive) else 0.25)
        if fds:
            poller = select.poll()
            for fd in fds:
                poller.register(fd, select.POLLIN)
            poller.poll(timeout * 1000)
        else:
            time.sleep(timeout)


def stop_processes(
    procs: Iterable[psutil.Process],
    grace_s: float,
    *,
    sig: int = signal.SIGTERM,
    kill_wait_s: float = KILL_WAIT_S,
) -> list[StopOutcome]:
    """Stop ``procs``: ``sig`` (SIGTERM) to all, wait ``grace_s``, SIGKILL the rest, wait.

    Returns one :class:`StopOutcome` per distinct process, in input order.
    Never signals pid <= 1, the calling process or its ancestors (reported as
    ``protected``), and never a process whose PID was recycled since its
    ``psutil.Process`` was created (reported as ``already_gone``). EPERM is
    reported as ``denied``, never swallowed. ``grace_s=0`` goes straight to
    SIGKILL after the polite signal.
    """
    if grace_s < 0:
        msg = f"grace_s must be zero or positive (got {grace_s})"
        raise ValueError(msg)
    protected = protected_pids()
    results: dict[int, StopOutcome] = {}
    order: list[int] = []
    handles: list[_Handle] = []
    for proc in procs:
        if proc.pid in results or any(h.proc.pid == proc.pid for h in handles):
            continue
        order.append(proc.pid)
        if proc.pid <= 1 or proc.pid in protected:
            log.warning("refusing to signal pid %s: it is pid <= 1, procguard or its ancestor", proc.pid)
            results[proc.pid] = StopOutcome(proc, StopResult.PROTECTED, "procguard itself or its ancestor")
            continue
        if is_gone(proc):
            results[proc.pid] = StopOutcome(proc, StopResult.ALREADY_GONE)
            continue
        handles.append(_Handle(proc))
    try:
        signalled: list[_Handle] = []
        for handle in handles:
            final = handle.send(sig)
            if final is None:
                log.debug("sent %s to pid %s", signal.Signals(sig).name, handle.proc.pid)
                signalled.append(handle)
            else:
                if final is StopResult.DENIED:
                    log.warning("not permitted to signal pid %s (EPERM)", handle.proc.pid)
                detail = "EPERM: operation not permitted" if final is StopResult.DENIED else ""
                results[handle.proc.pid] = StopOutcome(handle.proc, final, detail)
        alive = _wait(signalled, time.monotonic() + grace_s)
        for handle in signalled:
            if handle not in alive:
                results[handle.proc.pid] = StopOutcome(handle.proc, StopResult.TERMINATED)
        killed: list[_Handle] = []
        for handle in alive:
            final = handle.send(signal.SIGKILL)
            if final is StopResult.ALREADY_GONE:
                results[handle.proc.pid] = StopOutcome(handle.proc, StopResult.TERMINATED)
            elif final is StopResult.DENIED:
                results[handle.proc.pid] = StopOutcome(
                    handle.proc, StopResult.DENIED, "EPERM on SIGKILL after SIGTERM was accepted"
                )
            else:
                log.info("pid %s did not stop within %.1fs; sent SIGKILL", handle.proc.pid, grace_s)
                killed.append(handle)
        survivors = _wait(killed, time.monotonic() + kill_wait_s)
        for handle in killed:
            if handle in survivors:
                log.error("pid %s survived SIGKILL for %.1fs", handle.proc.pid, kill_wait_s)
                results[handle.proc.pid] = StopOutcome(
                    handle.proc, StopResult.SURVIVED, "alive after SIGKILL (uninterruptible sleep?)"
                )
            else:
                results[handle.proc.pid] = StopOutcome(handle.proc, StopResult.KILLED)
    finally:
        for handle in handles:
            handle.close()
    return [results[pid] for pid in order]


def terminate_processes(
    procs: Sequence[psutil.Process], grace_s: float
) -> tuple[list[psutil.Process], list[psutil.Process]]:
    """SIGTERM ``procs``, wait up to ``grace_s``, SIGKILL the rest; return ``(gone, alive)``.

    The partition mirrors :func:`psutil.wait_procs`. ``alive`` holds what
    could not be stopped (EPERM, protected, survived SIGKILL); use
    :func:`stop_processes` when the reason matters.
    """
    outcomes = stop_processes(procs, grace_s)
    gone = [o.process for o in outcomes if o.gone]
    alive = [o.process for o in outcomes if not o.gone]
    return gone, alive


def terminate_tree(
    pid: int | psutil.Process, grace_s: float
) -> tuple[list[psutil.Process], list[psutil.Process]]:
    """Stop ``pid`` and all its descendants (see :func:`terminate_processes`)."""
    return terminate_processes(process_tree(pid), grace_s)
