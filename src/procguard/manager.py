"""ProcessManager: the object a worker puts around its loop for a bounded, observable, graceful life.

Example (sync; ``sleep_async`` is the asyncio twin of ``sleep``)::

    import sys
    from procguard import ProcessManager

    manager = ProcessManager(name="collector", max_runtime_hours=24,
                             memory_limit_mb=2048, cpu_limit_percent=80)
    manager.start()
    while manager.should_continue():      # False once a stop is due
        manager.heartbeat()               # "the loop is making progress"
        do_work()
        manager.sleep(60)                 # wakes at once when a stop is due
    sys.exit(manager.shutdown())          # cleanup, children, lock; exit status says why

How the work is split (docs/PROCESS_LIFECYCLE_MANAGEMENT.md tells the whole story):

- The hot path (:meth:`should_continue`, :meth:`heartbeat`) only reads and
  writes attributes and calls ``time.monotonic``: no system call, no lock.
- One *monitor* thread (:mod:`procguard.monitor`) wakes every
  ``sample_interval_s`` (or at once when a signal or a stop request
  arrives): it samples memory and CPU (:mod:`procguard.sampler`), applies
  the limits (:mod:`procguard.policy`), turns recorded signals into stops
  (:mod:`procguard.signals`), enforces the grace period, and feeds the
  systemd watchdog while the loop is alive.
- A graceful stop only raises a flag; the work loop sees it at its next
  :meth:`should_continue`, so the in-flight iteration always completes, and
  :meth:`sleep` / :meth:`sleep_async` return at once
  (:mod:`procguard.stop_event`). Only three things end the process from the
  monitor thread with ``os._exit`` (:mod:`procguard.emergency_exit`): the
  hard memory ceiling (status 86), a second stop signal and a graceful stop
  that overran ``grace_s`` (both 87). Descendants are SIGKILLed first so
  that none is orphaned.
- :meth:`shutdown` runs the cleanup callbacks, each bounded
  (:mod:`procguard.callbacks`), then stops the children still running
  (:mod:`procguard.children`).
- The process exit status is *not* set behind your back: :meth:`shutdown`
  returns it (``sys.exit(manager.shutdown())``, or :meth:`exit`), and after
  a ``with`` block it is in :attr:`exit_status`.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from . import policy
from .callbacks import CleanupFn, callable_name, run_cleanup, run_cleanup_async
from .children import terminate_children
from .errors import UsageError
from .monitor import (
    FAST_SAMPLE_DIVISOR,  # noqa: F401  (still importable from here)
    Monitor,
    format_mb,
)
from .reasons import ExitStatus, StopReason, exit_status_for
from .signals import STOP_SIGNALS, SignalCapture
from .snapshot import HEALTHY, HealthStatus, WorkerSnapshot
from .stop_event import StopEvent
from .units import parse_count, parse_duration, parse_percent, parse_size

if TYPE_CHECKING:
    import argparse

    from .instances.claim import InstanceClaim
    from .sampler import ResourceSample, ResourceSampler

log = logging.getLogger(__name__)

_monotonic = time.monotonic
_NEVER = sys.maxsize

#: Defaults, chosen for a demanding user (see the lifecycle document for the reasoning).
DEFAULT_SAMPLE_INTERVAL_S = 0.25
DEFAULT_MEMORY_STRIKES = 3
DEFAULT_HEARTBEAT_TIMEOUT_S = 60.0
DEFAULT_CPU_WINDOW_S = 60.0
DEFAULT_CPU_GRACE_S = 60.0
DEFAULT_GRACE_S = 30.0
DEFAULT_CLEANUP_TIMEOUT_S = 10.0
DEFAULT_CHILD_GRACE_S = 5.0

#: Reasons that are planned and logged at INFO; the others are WARNING.
_PLANNED = frozenset(
    {StopReason.MAX_RUNTIME, StopReason.MAX_ITERATIONS, StopReason.COMPLETED, StopReason.REQUESTED,
     StopReason.SIGNAL}
)

F = TypeVar("F", bound=CleanupFn)


def _limit(value: float | None) -> float | None:
    """``0`` and ``None`` both mean "no limit"."""
    return value if value else None


class ProcessManager:
    """Bounded life, graceful stop and health for the process it runs in.

    Seed-compatible positional arguments: ``name``, ``max_runtime_hours``,
    ``memory_limit_mb``, ``cpu_limit_percent`` (percent of one core; up to
    100 x CPU count). ``0`` or ``None`` means "no limit" for every limit.
    Numbers may also be given as strings with units (``"90m"``, ``"512MB"``).

    Keyword-only (defaults in brackets):

    - ``max_iterations`` [None]: stop after this many iterations.
    - ``heartbeat_timeout_s`` [60]: the loop counts as stuck (unhealthy, then
      stopped with ``heartbeat_timeout``) when neither :meth:`heartbeat` nor
      a new iteration nor the manager's own sleep happened for this long.
    - ``sample_interval_s`` [0.25]: how often the monitor thread samples.
    - ``memory_strikes`` [3]: consecutive samples over the soft memory limit
      before a graceful stop (0.75 s at the default interval).
    - ``memory_hard_limit_mb`` [1.25 x soft]: one sample above it ends the
      process at once (status 86).
    - ``include_children`` [True]: memory/CPU of the process and all its
      descendants; ``use_uss`` [False]: count USS instead of RSS (costlier).
    - ``cpu_window_s`` [60]: the CPU limit compares the average over a full
      window; ``cpu_grace_s`` [60]: no CPU verdict this soon after start.
    - ``grace_s`` [30]: a graceful stop still running after this long ends
      the process (status 87). Counted from the stop request.
    - ``drain_delay_s`` [0]: after a first SIGTERM/SIGINT, stay not-ready but
      working this long before stopping (so load balancers stop sending).
    - ``handle_signals`` [True]: install SIGTERM/SIGINT handlers (main thread only).
    - ``health_port`` [None] / ``health_host`` ["127.0.0.1"]: serve
      /health, /ready, /metrics over HTTP (``None`` or 0: no server).
    - ``runtime_jitter_s`` [0]: recycle up to this much *before* max runtime,
      chosen at random, so a fleet started together does not recycle together.
    - ``cleanup_timeout_s`` [10]: bound of each cleanup callback.
    - ``child_grace_s`` [5]: SIGTERM-to-SIGKILL wait for leftover children;
      ``terminate_children`` [True]: False leaves them running (your choice).
    - ``max_consecutive_failures`` [None]: :meth:`record_failure` this many
      times in a row stops with ``iteration_failures``.
    - ``single_instance`` [True] / ``state_dir`` [None]: with a ``name``,
      :meth:`start` takes the instance lock (refusing a second instance).
    """

    # Slots keep attribute access on the hot path specialised: with more than
    # 30 instance attributes CPython's shared-key dicts (and the fast attribute
    # opcodes that rely on them) give up, which costs ~25% per iteration.
    __slots__ = (
        "__weakref__",
        "_breach",
        "_cleanups",
        "_consecutive_failures",
        "_crashed",
        "_deadline",
        "_exit_status",
        "_failed_iterations",
        "_gate",
        "_halt",
        "_health_server",
        "_instance_claim",
        "_iteration_cap",
        "_iterations",
        "_last_beat",
        "_latest",
        "_monitor",
        "_notifier",
        "_pid",
        "_progress_at",
        "_sampler",
        "_shut_down",
        "_signals",
        "_sleep_until",
        "_started",
        "_started_at",
        "_stop_asked_at",
        "_stop_detail",
        "_stop_due_at",
        "_stop_event",
        "_stop_lock",
        "_stop_reason",
        "_stop_signum",
        "_stopped_at",
        "_user_ready",
        "_user_ready_reason",
        "child_grace_s",
        "cleanup_timeout_s",
        "cpu_grace_s",
        "cpu_limit_percent",
        "cpu_window_s",
        "drain_delay_s",
        "grace_s",
        "handle_signals",
        "health_host",
        "health_port",
        "heartbeat_timeout_s",
        "include_children",
        "limits",
        "max_consecutive_failures",
        "max_iterations",
        "max_runtime_s",
        "memory_hard_limit_bytes",
        "memory_limit_bytes",
        "memory_strikes",
        "name",
        "runtime_jitter_s",
        "sample_interval_s",
        "single_instance",
        "state_dir",
        "terminate_children",
        "use_uss",
    )

    def __init__(
        self,
        name: str | None = None,
        max_runtime_hours: float | str | None = 24,
        memory_limit_mb: float | str | None = 2048,
        cpu_limit_percent: float | str | None = 80,
        *,
        max_iterations: int | None = None,
        heartbeat_timeout_s: float | None = DEFAULT_HEARTBEAT_TIMEOUT_S,
        sample_interval_s: float = DEFAULT_SAMPLE_INTERVAL_S,
        cpu_window_s: float = DEFAULT_CPU_WINDOW_S,
        cpu_grace_s: float = DEFAULT_CPU_GRACE_S,
        include_children: bool = True,
        use_uss: bool = False,
        grace_s: float = DEFAULT_GRACE_S,
        handle_signals: bool = True,
        health_port: int | None = None,
        health_host: str = "127.0.0.1",
        runtime_jitter_s: float = 0.0,
        memory_hard_limit_mb: float | str | None = None,
        memory_strikes: int = DEFAULT_MEMORY_STRIKES,
        cleanup_timeout_s: float = DEFAULT_CLEANUP_TIMEOUT_S,
        child_grace_s: float = DEFAULT_CHILD_GRACE_S,
        terminate_children: bool = True,
        drain_delay_s: float = 0.0,
        max_consecutive_failures: int | None = None,
        single_instance: bool = True,
        state_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if name is not None and (not isinstance(name, str) or not name.strip()):
            msg = f"name: {name!r} is not an instance name (use a non-empty string or None)"
            raise UsageError(msg)
        self.name = name
        self.max_runtime_s = _limit(
            parse_duration(max_runtime_hours or 0, default_unit="h", what="max_runtime_hours")
        )
        soft = parse_size(memory_limit_mb or 0, what="memory_limit_mb") or None
        hard = (
            parse_size(memory_hard_limit_mb, what="memory_hard_limit_mb") or None
            if memory_hard_limit_mb is not None
            else policy.default_hard_limit(soft)
        )
        if soft and hard and hard < soft:
            msg = (
                f"memory_hard_limit_mb: {memory_hard_limit_mb!r} is below memory_limit_mb "
                f"{memory_limit_mb!r} (use a ceiling at or above the soft limit)"
            )
            raise UsageError(msg)
        self.memory_limit_bytes = soft
        self.memory_hard_limit_bytes = hard
        self.cpu_limit_percent = _limit(
            parse_percent(
                cpu_limit_percent or 0, maximum=100.0 * (os.cpu_count() or 1), what="cpu_limit_percent"
            )
        )
        self.max_iterations = (
            parse_count(max_iterations, what="max_iterations") or None if max_iterations is not None else None
        )
        self.heartbeat_timeout_s = _limit(
            parse_duration(heartbeat_timeout_s or 0, what="heartbeat_timeout_s")
        )
        self.sample_interval_s = parse_duration(sample_interval_s, what="sample_interval_s")
        if self.sample_interval_s <= 0:
            msg = (
                f"sample_interval_s: {sample_interval_s!r} is out of range "
                "(use a positive number of seconds)"
            )
            raise UsageError(msg)
        self.cpu_window_s = parse_duration(cpu_window_s, what="cpu_window_s")
        self.cpu_grace_s = parse_duration(cpu_grace_s, what="cpu_grace_s")
        self.include_children = bool(include_children)
        self.use_uss = bool(use_uss)
        self.grace_s = parse_duration(grace_s, what="grace_s")
        self.handle_signals = bool(handle_signals)
        self.health_port = health_port or None
        self.health_host = health_host
        self.runtime_jitter_s = parse_duration(runtime_jitter_s, what="runtime_jitter_s")
        self.memory_strikes = parse_count(memory_strikes, what="memory_strikes", minimum=1)
        self.cleanup_timeout_s = parse_duration(cleanup_timeout_s, what="cleanup_timeout_s")
        self.child_grace_s = parse_duration(child_grace_s, what="child_grace_s")
        self.terminate_children = bool(terminate_children)
        self.drain_delay_s = parse_duration(drain_delay_s, what="drain_delay_s")
        self.max_consecutive_failures = (
            parse_count(max_consecutive_failures, what="max_consecutive_failures") or None
            if max_consecutive_failures is not None
            else None
        )
        self.single_instance = bool(single_instance)
        self.state_dir = state_dir
        self.limits = policy.Limits(
            memory_soft_bytes=soft,
            memory_hard_bytes=hard,
            memory_strikes=self.memory_strikes,
            cpu_limit_percent=self.cpu_limit_percent,
            cpu_window_s=self.cpu_window_s,
            cpu_grace_s=self.cpu_grace_s,
        )

        # --- hot-path state: plain attributes only -------------------------
        self._halt = True  # not started, or a stop is due
        self._iterations = 0
        self._iteration_cap = self.max_iterations or _NEVER
        # should_continue() stays on its fast path while iterations < _gate: the
        # cap while running, -1 when halted. One compare covers both checks, and
        # only plain stores change it (no read-modify-write shared with the monitor).
        self._gate = -1
        self._last_beat = 0.0
        self._sleep_until = 0.0

        # --- lifecycle state ----------------------------------------------
        self._pid = os.getpid()
        self._started = False
        self._shut_down = False
        self._started_at = 0.0
        self._stopped_at = 0.0
        self._deadline: float | None = None
        self._stop_lock = threading.Lock()
        self._stop_reason: StopReason | None = None
        self._stop_detail = ""
        self._stop_signum: int | None = None
        self._stop_asked_at: float | None = None
        self._stop_due_at: float | None = None
        self._crashed = False
        self._exit_status: int | None = None
        self._user_ready = True
        self._user_ready_reason = ""
        self._consecutive_failures = 0
        self._failed_iterations = 0
        self._cleanups: list[CleanupFn] = []
        self._stop_event = StopEvent()

        # --- monitor state --------------------------------------------------
        self._signals: SignalCapture | None = None
        self._sampler: ResourceSampler | None = None
        # Kept current by the monitor thread; read by health() and snapshot().
        self._latest: ResourceSample | None = None
        self._breach: str | None = None
        self._progress_at = 0.0
        self._monitor: Monitor | None = None
        self._health_server: Any = None
        self._notifier: Any = None
        self._instance_claim: InstanceClaim | None = None

    # ------------------------------------------------------------------ build

    @classmethod
    def from_args(cls, args: argparse.Namespace, **overrides: Any) -> ProcessManager:
        """Build a manager from the flags of ``add_lifecycle_arguments(parser)``; ``overrides`` win."""
        from .lifecycle_args import manager_kwargs_from_args

        kwargs = dict(manager_kwargs_from_args(args))
        kwargs.update(overrides)
        return cls(**kwargs)

    def __repr__(self) -> str:
        state = "stopping" if self.is_stopping else ("running" if self._started else "idle")
        return f"<ProcessManager name={self.name!r} pid={self._pid} {state} iterations={self._iterations}>"

    @property
    def _label(self) -> str:
        return self.name or "worker"

    # ------------------------------------------------------------------ start

    def start(self) -> ProcessManager:
        """Take the instance lock, install signal handlers, start the monitor (and HTTP server).

        Idempotent. Raises :class:`~procguard.errors.AlreadyRunningError` when
        another instance of ``name`` holds the lock, and the health server's
        error when its port is taken; nothing is left installed then.
        """
        if self._started:
            return self
        if self._shut_down:
            msg = f"{self._label}: this ProcessManager was shut down; create a new one"
            raise RuntimeError(msg)
        self._pid = os.getpid()
        self._acquire_instance_lock()
        try:
            self._start_monitoring()
        except BaseException:
            self._teardown_after_failed_start()
            raise
        atexit.register(self._shutdown_at_exit)
        self._refresh_health()
        if self._notifier is not None:
            self._call_quietly(self._notifier.ready)
        log.info(
            "%s (pid %d) started: max runtime %s, max iterations %s, memory limit %s (hard %s), "
            "CPU limit %s, heartbeat timeout %s, grace %gs%s",
            self._label,
            self._pid,
            f"{self.max_runtime_s:g}s" if self.max_runtime_s else "none",
            self.max_iterations or "none",
            format_mb(self.memory_limit_bytes) if self.memory_limit_bytes else "none",
            format_mb(self.memory_hard_limit_bytes) if self.memory_hard_limit_bytes else "none",
            f"{self.cpu_limit_percent:g}%" if self.cpu_limit_percent else "none",
            f"{self.heartbeat_timeout_s:g}s" if self.heartbeat_timeout_s else "none",
            self.grace_s,
            f", health on {self.health_host}:{self.health_port}" if self._health_server is not None else "",
        )
        return self

    def _acquire_instance_lock(self) -> None:
        if not (self.name and self.single_instance):
            return
        from .instances.claim import InstanceClaim

        self._instance_claim = InstanceClaim.take(
            self.name, pid=self._pid, state_dir=self.state_dir, health_port=self.health_port
        )

    def _start_monitoring(self) -> None:
        from .sampler import ResourceSampler

        now = _monotonic()
        self._started_at = now
        self._last_beat = now
        self._progress_at = now
        self._deadline = policy.runtime_deadline(now, self.max_runtime_s, self.runtime_jitter_s)
        self._sampler = ResourceSampler(
            self._pid,
            include_children=self.include_children,
            use_uss=self.use_uss,
            cpu_window_s=self.cpu_window_s,
        )
        self._warn_about_cgroup()
        self._signals = SignalCapture(STOP_SIGNALS)
        if self.handle_signals and not self._signals.install():
            log.warning(
                "%s (pid %d): start() called off the main thread; SIGTERM/SIGINT handlers not installed",
                self._label,
                self._pid,
            )
        try:
            self._latest = self._sampler.sample()  # baseline: the CPU window starts here
        except Exception:
            log.debug("first sample failed", exc_info=True)
        if self.health_port:
            from .health.server import serve_health

            token = os.environ.get("PROCGUARD_HEALTH_TOKEN") or None
            self._health_server = serve_health(
                self.snapshot, host=self.health_host, port=self.health_port, token=token
            )
        if os.environ.get("NOTIFY_SOCKET"):
            try:
                from .health.notify import SystemdNotifier

                self._notifier = SystemdNotifier.from_env()
            except ImportError:  # pragma: no cover
                log.warning("NOTIFY_SOCKET is set but procguard.health.notify is unavailable")
        # Started from the main thread, the monitor watches it (and is no daemon):
        # see Monitor for why.
        monitor = Monitor(self, watch_main=threading.current_thread() is threading.main_thread())
        # Running from here on: set before the monitor runs, so that a stop it
        # decides at its first tick can never be overwritten by start().
        self._started = True
        self._halt = False
        self._gate = self._iteration_cap
        self._monitor = monitor
        monitor.start()

    def _warn_about_cgroup(self) -> None:
        if not self.memory_limit_bytes:
            return
        from .cgroup import memory_limit_bytes, soft_limit_warning

        warning = soft_limit_warning(self.memory_limit_bytes, memory_limit_bytes())
        if warning:
            log.warning("%s (pid %d): %s", self._label, self._pid, warning)

    def _teardown_after_failed_start(self) -> None:
        self._started = False
        self._halt = True
        self._gate = -1
        if self._monitor is not None:
            self._monitor.stop()
        if self._signals is not None:
            self._signals.notify()
        if self._monitor is not None and self._monitor.is_alive():
            self._monitor.join(timeout=5)
        if self._health_server is not None:
            self._call_quietly(self._health_server.close)
            self._health_server = None
        if self._signals is not None:
            self._signals.close()
            self._signals = None
        self._release_instance_lock()

    # --------------------------------------------------------------- hot path

    def should_continue(self) -> bool:
        """True to begin one more iteration; False once a stop is due.

        Each True return counts one iteration. No system call, no lock on
        this path; the slow path runs only when a stop is due, at the
        iteration cap, or before :meth:`start` (which it calls for you).
        """
        if self._iterations >= self._gate:
            return self._should_continue_slow()
        self._iterations += 1
        return True

    def heartbeat(self) -> None:
        """Tell the manager the work loop is alive. Call it at least every ``heartbeat_timeout_s``."""
        self._last_beat = _monotonic()

    def _should_continue_slow(self) -> bool:
        if not self._started:
            if self._shut_down:
                return False
            self.start()
        if self._halt:
            return False
        if self._iterations >= self._iteration_cap:
            self._begin_stop(
                StopReason.MAX_ITERATIONS,
                f"{self._iterations} iterations done, the limit",
            )
            return False
        self._iterations += 1
        return True

    # ------------------------------------------------------------------ sleep

    def sleep(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; return at once when a stop is due.

        Returns True when the full time was slept, False when woken by a stop.
        Time asleep here counts as a heartbeat (up to the planned wake-up).
        """
        if self._halt and self._started:
            return False
        if seconds <= 0:
            return not self._halt
        self._sleep_until = _monotonic() + seconds
        try:
            woken = self._stop_event.wait(seconds)
        finally:
            self._sleep_until = 0.0
            self._last_beat = _monotonic()
        return not woken

    async def sleep_async(self, seconds: float) -> bool:
        """``await`` version of :meth:`sleep`: returns at once when a stop is due."""
        if self._halt and self._started:
            return False
        import asyncio

        if seconds <= 0:
            await asyncio.sleep(0)
            return not self._halt
        self._sleep_until = _monotonic() + seconds
        try:
            woken = await self._stop_event.wait_async(seconds)
        finally:
            self._sleep_until = 0.0
            self._last_beat = _monotonic()
        return not woken

    # ------------------------------------------------------------ stop logic

    def request_stop(self, reason: StopReason = StopReason.REQUESTED, detail: str = "") -> bool:
        """Ask for a graceful stop (any thread; not from a signal handler).

        Returns False when a stop was already under way (the first reason wins).
        """
        reason = StopReason(reason)
        return self._begin_stop(reason, detail or "requested by the program")

    def _begin_stop(
        self, reason: StopReason, detail: str, *, signum: int | None = None, drain: float = 0.0
    ) -> bool:
        now = _monotonic()
        with self._stop_lock:
            if self._stop_reason is not None:
                return False
            self._stop_reason = reason
            self._stop_detail = detail
            self._stop_signum = signum
            self._stop_asked_at = now
            self._stop_due_at = now + drain
        level = logging.INFO if reason in _PLANNED else logging.WARNING
        log.log(
            level,
            "%s (pid %d) stopping: %s (%s) after %d iterations, %.1fs up%s",
            self._label,
            self._pid,
            reason.value,
            detail,
            self._iterations,
            now - self._started_at if self._started else 0.0,
            f"; draining for {drain:g}s first" if drain > 0 else "",
        )
        if self._notifier is not None:
            self._call_quietly(self._notifier.stopping, f"stopping: {reason.value} ({detail})")
        self._refresh_health()
        if drain <= 0:
            self._make_due()
        elif self._signals is not None:
            self._signals.notify()  # the monitor times the drain
        return True

    def _make_due(self) -> None:
        """From now on should_continue() is False and every sleep returns."""
        self._halt = True
        self._gate = -1
        self._stop_event.set()

    # --------------------------------------------------------------- heartbeat

    def _heartbeat_age(self, now: float) -> float:
        return policy.heartbeat_age(now, max(self._last_beat, self._progress_at), self._sleep_until)

    # ---------------------------------------------------------------- failures

    def record_failure(self, exc: BaseException | None = None) -> None:
        """Count a failed iteration; ``max_consecutive_failures`` in a row stops the worker."""
        self._failed_iterations += 1
        self._consecutive_failures += 1
        cap = self.max_consecutive_failures
        if cap and self._consecutive_failures >= cap:
            last = f"; last: {exc!r}" if exc is not None else ""
            self._begin_stop(
                StopReason.ITERATION_FAILURES,
                f"{self._consecutive_failures} consecutive failed iterations, the limit{last}",
            )

    def record_success(self) -> None:
        """An iteration succeeded: the consecutive-failure count starts over."""
        self._consecutive_failures = 0

    # ----------------------------------------------------------------- health

    def set_ready(self, ready: bool, reason: str = "") -> None:
        """Mark the worker (not) ready, e.g. while a dependency is down; liveness is unaffected."""
        self._user_ready_reason = "" if ready else (reason or "marked not ready by the program")
        self._user_ready = bool(ready)
        self._refresh_health()

    def _refresh_health(self) -> None:
        """Publish a state change to the health server at once (it also refreshes on its own)."""
        server = self._health_server
        refresh = getattr(server, "refresh", None)
        if refresh is not None:
            self._call_quietly(refresh)

    def health(self, now: float | None = None) -> HealthStatus:
        """Liveness: unhealthy when stopping, a limit is breached, or the heartbeat is stale."""
        now = _monotonic() if now is None else now
        if not self._started:
            return HealthStatus(False, "stopped" if self._shut_down else "not started")
        if self._stop_reason is not None:
            return HealthStatus(False, f"stopping: {self._stop_reason.value} ({self._stop_detail})")
        age = self._heartbeat_age(now)
        if self.heartbeat_timeout_s is not None and age > self.heartbeat_timeout_s:
            return HealthStatus(
                False, f"heartbeat stale: {age:.1f}s old (timeout {self.heartbeat_timeout_s:g}s)"
            )
        if self._breach:
            return HealthStatus(False, self._breach)
        return HealthStatus(True, HEALTHY)

    def readiness(self) -> HealthStatus:
        """Readiness: started, not draining or stopping, not marked not-ready."""
        if not self._started:
            return HealthStatus(False, "stopped" if self._shut_down else "not started")
        if self._stop_reason is not None:
            return HealthStatus(False, f"stopping: {self._stop_reason.value}")
        if not self._user_ready:
            return HealthStatus(False, self._user_ready_reason)
        return HealthStatus(True, "ready")

    def snapshot(self) -> WorkerSnapshot:
        """The current figures as one value.

        Cheap (no system call: the monitor thread keeps the latest sample); the
        health server calls it on every request.
        """
        now = _monotonic()
        s = self._latest
        started = self._started
        uptime = (self._stopped_at or now) - self._started_at if self._started_at else 0.0
        remaining = None
        if self._deadline is not None and started:
            remaining = max(0.0, self._deadline - now)
        reason = self._stop_reason
        return WorkerSnapshot(
            name=self._label,
            pid=self._pid,
            health=self.health(now),
            ready=self.readiness(),
            started=started,
            stopping=reason is not None,
            uptime_seconds=uptime,
            cpu_percent=s.cpu_percent if s else 0.0,
            memory_bytes=s.memory_bytes if s else 0,
            memory_percent=s.memory_percent if s else 0.0,
            num_threads=s.num_threads if s else 0,
            num_children=s.num_children if s else 0,
            heartbeat_age_seconds=self._heartbeat_age(now) if started else None,
            iterations=self._iterations,
            failed_iterations=self._failed_iterations,
            max_iterations=self.max_iterations,
            max_runtime_seconds=self.max_runtime_s,
            remaining_seconds=remaining,
            memory_limit_bytes=self.memory_limit_bytes,
            cpu_limit_percent=self.cpu_limit_percent,
            stop_reason=reason.value if reason is not None else None,
            stop_reasons_total={reason.value: 1} if reason is not None else {},
        )

    def metrics(self) -> dict[str, Any]:
        """The ``/metrics`` JSON document of DESIGN.md section 4."""
        return self.snapshot().to_metrics_json()

    # -------------------------------------------------------------- properties

    @property
    def stop_reason(self) -> StopReason | None:
        """Why the worker is stopping/stopped (None while running)."""
        return self._stop_reason

    @property
    def exit_status(self) -> int:
        """The exit status for the stop so far (final after :meth:`shutdown`)."""
        if self._exit_status is not None:
            return self._exit_status
        if self._crashed:
            return int(ExitStatus.ERROR)
        return exit_status_for(self._stop_reason, self._stop_signum)

    @property
    def iterations(self) -> int:
        """Iterations begun (True returns of :meth:`should_continue`)."""
        return self._iterations

    @property
    def is_stopping(self) -> bool:
        """True once a stop was asked (also during the drain delay)."""
        return self._stop_reason is not None

    @property
    def health_server(self) -> Any:
        """The running HealthServer (``.port``), or None."""
        return self._health_server

    # ------------------------------------------------------------- shutdown

    def add_cleanup(self, fn: F) -> F:
        """Register a callback (sync or async) for :meth:`shutdown`; last added runs first.

        Each runs bounded by ``cleanup_timeout_s``; one raising is logged and the
        others still run. Usable as a decorator.
        """
        if not callable(fn):
            msg = f"add_cleanup: {fn!r} is not callable (use a function or coroutine function)"
            raise UsageError(msg)
        self._cleanups.append(fn)
        return fn

    def shutdown(self) -> int:
        """Stop for good and return the exit status (see the table in the lifecycle doc).

        Runs the cleanup callbacks (last added first, each bounded), stops the
        health server, terminates this process's remaining children (SIGTERM,
        ``child_grace_s``, SIGKILL), restores the signal handlers and releases
        the instance lock. Idempotent. Async callbacks run in a fresh event loop
        here; inside a running loop use ``await shutdown_async()`` instead.
        """
        if self._shut_down:
            return self.exit_status
        self._prepare_shutdown()
        for fn in reversed(self._cleanups):
            run_cleanup(fn, self.cleanup_timeout_s, label=self._label, pid=self._pid)
        return self._finish_shutdown()

    async def shutdown_async(self) -> int:
        """:meth:`shutdown` for asyncio code: async callbacks run on the current loop."""
        if self._shut_down:
            return self.exit_status
        self._prepare_shutdown()
        for fn in reversed(self._cleanups):
            await run_cleanup_async(fn, self.cleanup_timeout_s, label=self._label, pid=self._pid)
        return self._finish_shutdown()

    def exit(self) -> NoReturn:
        """``sys.exit(self.shutdown())``: end the process with the status that says why."""
        raise SystemExit(self.shutdown())

    def _prepare_shutdown(self) -> None:
        if self._stop_reason is None:
            reason = StopReason.REQUESTED if self._crashed else StopReason.COMPLETED
            detail = "the work loop raised" if self._crashed else "the work loop ended"
            self._begin_stop(reason, detail)
        self._make_due()

    def _finish_shutdown(self) -> int:
        if self._health_server is not None:
            self._call_quietly(self._health_server.close)
        monitor = self._monitor
        if self.terminate_children:
            terminate_children(self._pid, self.child_grace_s, label=self._label)
        self._shut_down = True
        if monitor is not None:
            monitor.stop()
        if self._signals is not None:
            self._signals.notify()
        if monitor is not None and monitor.is_alive() and monitor is not threading.current_thread():
            monitor.join(timeout=max(1.0, self.sample_interval_s * 4))
        if self._signals is not None:
            self._signals.close()
        self._release_instance_lock()
        if self._notifier is not None:
            self._call_quietly(self._notifier.close)
        self._started = False
        self._stopped_at = _monotonic()
        self._halt = True
        self._gate = -1
        atexit.unregister(self._shutdown_at_exit)
        status = self.exit_status
        self._exit_status = status
        uptime = _monotonic() - self._started_at if self._started_at else 0.0
        log.info(
            "%s (pid %d) stopped: %s, exit status %d, %d iterations, %.1fs up",
            self._label,
            self._pid,
            self._stop_reason.value if self._stop_reason else "completed",
            status,
            self._iterations,
            uptime,
        )
        return status

    def _shutdown_at_exit(self) -> None:
        """atexit: a program that forgot ``shutdown()`` still runs its cleanups and leaves no children."""
        if self._started and not self._shut_down and os.getpid() == self._pid:
            log.info("%s (pid %d): shutting down at interpreter exit", self._label, self._pid)
            self.shutdown()

    def _release_instance_lock(self) -> None:
        claim, self._instance_claim = self._instance_claim, None
        if claim is not None:
            self._call_quietly(claim.lock.release)
            claim.withdraw_marker()

    def _call_quietly(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            log.warning("%s (pid %d): %s failed", self._label, self._pid, callable_name(fn), exc_info=True)

    # -------------------------------------------------------- context managers

    def __enter__(self) -> ProcessManager:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is not None and isinstance(exc, Exception):
            self._crashed = True
        self.shutdown()

    async def __aenter__(self) -> ProcessManager:
        return self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is not None and isinstance(exc, Exception):
            self._crashed = True
        await self.shutdown_async()
