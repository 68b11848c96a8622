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
  hard memory ceiling (``hard_memory_limit``, status 86), a second stop
  signal and a graceful stop that overran its grace (``grace_exceeded``,
  87). Descendants are SIGKILLed first so that none is orphaned.
- Every stop is one :class:`~procguard.outcome.StopOutcome` (reason, detail
  with the figures, exit status, who ended the worker), created where the
  stop is decided and rendered everywhere: the last log line, the exit
  status, and -- under ``procguard up`` -- the supervisor's status, history
  and metrics, which hear it through the worker's link
  (:mod:`procguard.parent_link`).
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
from collections.abc import Callable, Collection
from types import TracebackType
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from . import policy
from .callbacks import CleanupFn, callable_name, run_cleanup, run_cleanup_async
from .children import terminate_children
from .copies import INDEX_ENV
from .errors import UsageError
from .limits import SETTINGS, Setting, WorkerLimits
from .monitor import Monitor, StopRequest, format_mb
from .outcome import StopOutcome
from .parent_link import ParentLink, claim, stop_for_signal
from .reasons import Ender, ExitStatus, StopReason
from .signals import STOP_SIGNALS, SignalCapture
from .snapshot import (
    GAUGE_NAME_ACCEPTED,
    GAUGE_NAME_RE,
    HEALTHY,
    RESERVED_GAUGE_PREFIX,
    CircuitSnapshot,
    HealthStatus,
    WorkerSnapshot,
    circuits_health,
    circuits_readiness,
    metric_labels,
)
from .stop_event import StopEvent
from .units import parse_duration

if TYPE_CHECKING:
    import argparse

    from .circuit import CircuitBreaker, CircuitState
    from .instances.claim import InstanceClaim
    from .sampler import ResourceSampler
    from .tracing import IterationTracer

log = logging.getLogger(__name__)

_monotonic = time.monotonic
_NEVER = sys.maxsize

#: Defaults of the manager's own knobs (the worker's settings are WorkerLimits').
DEFAULT_SAMPLE_INTERVAL_S = 0.25
DEFAULT_CLEANUP_TIMEOUT_S = 10.0
DEFAULT_CHILD_GRACE_S = 5.0

#: The seed-compatible keywords, and the setting each one sets (declared with the setting,
#: in its bare unit: ``max_runtime_hours`` hours, ``memory_limit_mb`` MB, ``*_s`` seconds).
_KEYWORDS: dict[str, str] = {s.keyword: s.key for s in SETTINGS if s.keyword}
_KEYWORD_OF: dict[str, str] = {key: keyword for keyword, key in _KEYWORDS.items()}

#: "Not given": the setting keeps its value from ``limits`` (or the default).
_UNSET: Any = object()

F = TypeVar("F", bound=CleanupFn)


class ProcessManager:
    """Bounded life, graceful stop and health for the process it runs in.

    Seed-compatible positional arguments: ``name``, ``max_runtime_hours``,
    ``memory_limit_mb``, ``cpu_limit_percent`` (percent of one core; up to
    100 x the CPU count). ``0`` or ``None`` means "no limit" for every limit.
    Numbers may also be given as strings with units (``"90m"``, ``"512MB"``).

    The worker's settings are one :class:`~procguard.limits.WorkerLimits`
    (``limits=``, e.g. from :meth:`from_args`); the keywords below set single
    settings on top of it, in the setting's unit, and keep their defaults
    from it (docs/PROCESS_LIFECYCLE_MANAGEMENT.md has the table):
    ``max_iterations``, ``heartbeat_timeout_s`` [60], ``cpu_window_s`` [60],
    ``grace_s`` [30: the stop may take this long after the drain],
    ``drain_delay_s`` [0: after a first SIGTERM/SIGINT, stay not-ready but
    working this long], ``health_port`` / ``health_host`` [none /
    127.0.0.1: serve /health, /ready, /metrics over HTTP],
    ``memory_hard_limit_mb`` [1.25 x the limit: one sample above it ends the
    process at once, status 86], ``memory_strikes`` [3 consecutive samples
    over the memory limit before a graceful stop],
    ``max_consecutive_failures`` [5 :meth:`record_failure` in a row stop the
    worker with ``iteration_failures``], ``runtime_jitter_s`` [0: recycle up
    to this much *before* max runtime, drawn at random, so a fleet started
    together does not recycle together], ``iterations_jitter`` [0: the same
    for ``max_iterations``, in iterations].

    The manager's own knobs (keyword-only, defaults in brackets):

    - ``sample_interval_s`` [0.25]: how often the monitor thread samples
      (much faster while memory is over the limit).
    - ``include_children`` [True]: memory/CPU of the process and all its
      descendants; ``use_uss`` [False]: count USS instead of RSS (costlier).
    - ``handle_signals`` [True]: install SIGTERM/SIGINT handlers (main thread only).
    - ``cleanup_timeout_s`` [10]: bound of each cleanup callback.
    - ``child_grace_s`` [5]: SIGTERM-to-SIGKILL wait for leftover children;
      ``terminate_children`` [True]: False leaves them running (your choice).
    - ``single_instance`` [True] / ``state_dir`` [None]: with a ``name``,
      :meth:`start` takes the instance lock (refusing a second instance).
    - ``helper_pids`` [()]: procguard's own processes beside the worker
      (``procguard run``'s watchdog), never counted in its figures.
    - ``otel`` [None]: OpenTelemetry spans for each iteration and the stop
      (the ``procguard[otel]`` extra, :mod:`procguard.tracing`): None traces
      when the environment asks (``OTEL_EXPORTER_OTLP_ENDPOINT`` ...), True
      always, False never. ``OTEL_SDK_DISABLED=true`` turns it off in any case.

    Calls to external services can go through circuit breakers registered
    with :meth:`circuit`: their state shows on /health, /ready and /metrics.
    """

    # Slots keep attribute access on the hot path specialised: with more than
    # 30 instance attributes CPython's shared-key dicts (and the fast attribute
    # opcodes that rely on them) give up, which costs ~25% per iteration.
    __slots__ = (
        "__weakref__",
        "_circuits",
        "_cleanups",
        "_consecutive_failures",
        "_crash",
        "_deadline",
        "_failed_iterations",
        "_gate",
        "_gauges",
        "_halt",
        "_health_server",
        "_helpers",
        "_instance_claim",
        "_iteration_cap",
        "_iterations",
        "_labels",
        "_last_beat",
        "_link",
        "_monitor",
        "_notifier",
        "_otel",
        "_outcome",
        "_pid",
        "_reported_helpers",
        "_sampler",
        "_shut_down",
        "_signals",
        "_sleep_until",
        "_started",
        "_started_at",
        "_started_wall",
        "_stop",
        "_stop_event",
        "_stop_lock",
        "_stopped_at",
        "_trace",
        "_user_ready",
        "_user_ready_reason",
        "child_grace_s",
        "cleanup_timeout_s",
        "handle_signals",
        "include_children",
        "limits",
        "name",
        "sample_interval_s",
        "single_instance",
        "state_dir",
        "terminate_children",
        "use_uss",
    )

    def __init__(
        self,
        name: str | None = None,
        max_runtime_hours: float | str | None = _UNSET,
        memory_limit_mb: float | str | None = _UNSET,
        cpu_limit_percent: float | str | None = _UNSET,
        *,
        limits: WorkerLimits | None = None,
        max_iterations: int | str | None = _UNSET,
        heartbeat_timeout_s: float | str | None = _UNSET,
        sample_interval_s: float = DEFAULT_SAMPLE_INTERVAL_S,
        cpu_window_s: float | str = _UNSET,
        include_children: bool = True,
        use_uss: bool = False,
        grace_s: float | str = _UNSET,
        handle_signals: bool = True,
        health_port: int | None = _UNSET,
        health_host: str = _UNSET,
        health_tls_cert: str | None = _UNSET,
        health_tls_key: str | None = _UNSET,
        health_token_file: str | None = _UNSET,
        runtime_jitter_s: float | str = _UNSET,
        iterations_jitter: int | str = _UNSET,
        memory_hard_limit_mb: float | str | None = _UNSET,
        memory_strikes: int = _UNSET,
        cleanup_timeout_s: float = DEFAULT_CLEANUP_TIMEOUT_S,
        child_grace_s: float = DEFAULT_CHILD_GRACE_S,
        terminate_children: bool = True,
        drain_delay_s: float | str = _UNSET,
        max_consecutive_failures: int | None = _UNSET,
        single_instance: bool = True,
        state_dir: str | os.PathLike[str] | None = None,
        helper_pids: Collection[int] = (),
        otel: bool | None = None,
    ) -> None:
        if name is not None and (not isinstance(name, str) or not name.strip()):
            msg = f"name: {name!r} is not an instance name (use a non-empty string or None)"
            raise UsageError(msg)
        self.name = name
        given = {
            "max_runtime_hours": max_runtime_hours,
            "memory_limit_mb": memory_limit_mb,
            "cpu_limit_percent": cpu_limit_percent,
            "max_iterations": max_iterations,
            "heartbeat_timeout_s": heartbeat_timeout_s,
            "cpu_window_s": cpu_window_s,
            "grace_s": grace_s,
            "drain_delay_s": drain_delay_s,
            "health_port": health_port,
            "health_host": health_host,
            "health_tls_cert": health_tls_cert,
            "health_tls_key": health_tls_key,
            "health_token_file": health_token_file,
            "memory_hard_limit_mb": memory_hard_limit_mb,
            "memory_strikes": memory_strikes,
            "max_consecutive_failures": max_consecutive_failures,
            "runtime_jitter_s": runtime_jitter_s,
            "iterations_jitter": iterations_jitter,
        }
        #: The worker's settings (base units, None = no limit): one value, read everywhere.
        self.limits: WorkerLimits = WorkerLimits.from_user(
            {_KEYWORDS[keyword]: value for keyword, value in given.items() if value is not _UNSET},
            base=limits,
            what=_keyword_of,
        )
        self.sample_interval_s = parse_duration(sample_interval_s, what="sample_interval_s")
        if self.sample_interval_s <= 0:
            msg = (
                f"sample_interval_s: {sample_interval_s!r} is out of range "
                "(use a positive number of seconds)"
            )
            raise UsageError(msg)
        self.include_children = bool(include_children)
        self.use_uss = bool(use_uss)
        self.handle_signals = bool(handle_signals)
        self.cleanup_timeout_s = parse_duration(cleanup_timeout_s, what="cleanup_timeout_s")
        self.child_grace_s = parse_duration(child_grace_s, what="child_grace_s")
        self.terminate_children = bool(terminate_children)
        self.single_instance = bool(single_instance)
        self.state_dir = state_dir

        # --- hot-path state: plain attributes only -------------------------
        self._halt = True  # not started, or a stop is due
        self._iterations = 0
        cap = policy.iteration_cap(self.limits.max_iterations, self.limits.iterations_jitter)
        self._iteration_cap = cap or _NEVER  # max_iterations less this process's jitter
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
        self._started_wall = 0.0
        self._stopped_at = 0.0
        self._deadline: float | None = None
        self._stop_lock = threading.Lock()
        self._stop: StopRequest | None = None  # set once, under _stop_lock
        self._outcome: StopOutcome | None = None  # final, after shutdown
        self._crash: StopOutcome | None = None  # the work loop raised or exited with a failure status
        self._user_ready = True
        self._user_ready_reason = ""
        self._consecutive_failures = 0
        self._failed_iterations = 0
        self._cleanups: list[CleanupFn] = []
        self._circuits: dict[str, CircuitBreaker] = {}  # name -> breaker, shown on /health, /ready, /metrics
        # name -> value (set_gauge). A new name replaces the dict whole, a known one is set in place,
        # so the health publisher's copy never sees the dict change size under it.
        self._gauges: dict[str, float] = {}
        self._stop_event = StopEvent()

        # --- what start() sets up ---------------------------------------------
        self._signals: SignalCapture | None = None
        self._sampler: ResourceSampler | None = None
        self._monitor: Monitor | None = None
        self._health_server: Any = None
        self._notifier: Any = None
        self._instance_claim: InstanceClaim | None = None
        self._link: ParentLink | None = None  # this process's link to its supervisor (set at start)
        self._labels: tuple[str, str | None] = (name or "worker", None)
        self._helpers = frozenset(helper_pids)
        self._reported_helpers: set[int] = set()
        self._otel = None if otel is None else bool(otel)
        self._trace: IterationTracer | None = None  # set at start when tracing is on

    # ------------------------------------------------------------------ build

    @classmethod
    def from_args(cls, args: argparse.Namespace, **overrides: Any) -> ProcessManager:
        """Build a manager from the flags of ``add_lifecycle_arguments(parser)``; ``overrides`` win.

        The flags give the whole :class:`~procguard.limits.WorkerLimits`
        (``--name`` the name); ``overrides`` are constructor keywords set on
        top (``name=``, ``max_consecutive_failures=`` ...).
        """
        from .lifecycle_args import limits_from_args

        kwargs: dict[str, Any] = {"name": getattr(args, "name", None), "limits": limits_from_args(args)}
        kwargs.update(overrides)
        return cls(**kwargs)

    @property
    def runtime_jitter_s(self) -> float:
        """The most a recycle for max runtime comes early (``limits.runtime_jitter_s``)."""
        return self.limits.runtime_jitter_s

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
        lim = self.limits
        log.info(
            "%s (pid %d) started: max runtime %s, max iterations %s, memory limit %s (hard %s), "
            "CPU limit %s, heartbeat timeout %s, grace %gs%s",
            self._label,
            self._pid,
            f"{lim.max_runtime_s:g}s" if lim.max_runtime_s else "none",
            lim.max_iterations or "none",
            format_mb(lim.memory_limit_bytes) if lim.memory_limit_bytes else "none",
            format_mb(lim.memory_ceiling_bytes) if lim.memory_ceiling_bytes else "none",
            f"{lim.cpu_limit_percent:g}%" if lim.cpu_limit_percent else "none",
            f"{lim.heartbeat_timeout_s:g}s" if lim.heartbeat_timeout_s else "none",
            lim.grace_s,
            f", health on {lim.health_host}:{lim.health_port}" if self._health_server is not None else "",
        )
        return self

    def _acquire_instance_lock(self) -> None:
        if not (self.name and self.single_instance):
            return
        from .instances.claim import InstanceClaim

        self._instance_claim = InstanceClaim.take(
            self.name, pid=self._pid, state_dir=self.state_dir, health_port=self.limits.health_port
        )

    def _start_monitoring(self) -> None:
        from .sampler import ResourceSampler

        now = _monotonic()
        self._started_at = now
        self._started_wall = time.time()
        self._last_beat = now
        self._deadline = policy.runtime_deadline(now, self.limits.max_runtime_s, self.limits.runtime_jitter_s)
        self._link = claim()
        self._labels = metric_labels(self._label)
        self._sampler = ResourceSampler(
            self._pid,
            include_children=self.include_children,
            use_uss=self.use_uss,
            cpu_window_s=self.limits.cpu_window_s,
        )
        self._sampler.set_excluded(self._helpers)
        self._warn_about_cgroup()
        early_capture = SignalCapture.take_early() if self.handle_signals else None
        self._signals = early_capture or SignalCapture(STOP_SIGNALS)
        if self.handle_signals and not self._signals.install():
            log.warning(
                "%s (pid %d): start() called off the main thread; SIGTERM/SIGINT handlers not installed",
                self._label,
                self._pid,
            )
        if self.limits.health_port:
            from .health.endpoints import worker_token
            from .health.server import serve_health

            options: dict[str, Any] = {}
            # Under procguard up the supervisor holds the port and answers from what we publish
            # (with its TLS and token: nothing of them is needed here).
            mapping = self._link.health_mapping(self.limits.health_port) if self._link is not None else None
            if mapping is not None:
                options = {"mode": "published", "shared_fd": mapping.fd, "shared_size": mapping.size}
                token = None
            else:
                token = worker_token(self.limits.health_token_file, os.environ) or None
                options = {"tls_cert": self.limits.health_tls_cert, "tls_key": self.limits.health_tls_key}
            self._health_server = serve_health(
                self.snapshot, host=self.limits.health_host, port=self.limits.health_port, token=token,
                **options,
            )
        if os.environ.get("NOTIFY_SOCKET"):
            try:
                from .health.notify import SystemdNotifier

                self._notifier = SystemdNotifier.from_env()
            except ImportError:  # pragma: no cover
                log.warning("NOTIFY_SOCKET is set but procguard.health.notify is unavailable")
        # Started from the main thread, the monitor watches it (and is no daemon):
        # see Monitor for why.
        monitor = Monitor(_Watched(self), watch_main=threading.current_thread() is threading.main_thread())
        try:
            monitor.latest = self._sampler.sample()  # baseline: the CPU window starts here
        except Exception:
            log.debug("first sample failed", exc_info=True)
        self._trace = self._start_tracing()
        # Running from here on: set before the monitor runs, so that a stop it
        # decides at its first tick can never be overwritten by start().
        self._started = True
        self._halt = False
        # Traced, every should_continue() takes the slow path, which opens the iteration's span.
        self._gate = self._iteration_cap if self._trace is None else 0
        self._monitor = monitor
        early = self._signals.first_signum
        if early is not None:  # a stop signal came while procguard run was still starting
            self._begin_stop(stop_for_signal(early, self._link), drain=self.limits.drain_delay_s)
        monitor.start()

    def _start_tracing(self) -> IterationTracer | None:
        """The worker's tracer when tracing is on (nothing OpenTelemetry is imported when it is off)."""
        from .tracing import IterationTracer, wanted

        if not wanted(self._otel):
            return None
        worker, stack = self._labels
        return IterationTracer.start(worker, stack, explicit=bool(self._otel))

    def _warn_about_cgroup(self) -> None:
        limit = self.limits.memory_limit_bytes
        if not limit:
            return
        from .cgroup import memory_limit_bytes, soft_limit_warning

        warning = soft_limit_warning(limit, memory_limit_bytes())
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
        trace = self._trace
        if self._halt:
            if trace is not None:
                trace.pause()
            return False
        if self._iterations >= self._iteration_cap:
            if trace is not None:
                trace.pause()
            self._begin_stop(
                StopOutcome.decided(
                    StopReason.MAX_ITERATIONS,
                    f"{self._iterations} iterations done, the limit",
                    by=Ender.PROCGUARD,
                )
            )
            return False
        self._iterations += 1
        if trace is not None:
            trace.begin(self._iterations)
        return True

    # ------------------------------------------------------------------ sleep

    def sleep(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; return at once when a stop is due.

        Returns True when the full time was slept, False when woken by a stop.
        Time asleep here counts as a heartbeat (up to the planned wake-up).
        Traced, the iteration's span ends here: sleeping is not its work.
        """
        if self._trace is not None:
            self._trace.pause()
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
        if self._trace is not None:
            self._trace.pause()
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
        by = Ender.WORKER if reason in (StopReason.REQUESTED, StopReason.COMPLETED, StopReason.CRASHED) else (
            Ender.PROCGUARD
        )
        return self._begin_stop(StopOutcome.decided(reason, detail or "requested by the program", by=by))

    def _begin_stop(self, outcome: StopOutcome, *, drain: float = 0.0) -> bool:
        now = _monotonic()
        with self._stop_lock:
            if self._stop is not None:
                return False
            self._stop = StopRequest(outcome, asked_at=now, due_at=now + drain)
        level = logging.INFO if outcome.expected else logging.WARNING
        log.log(
            level,
            "%s (pid %d) stopping: %s (%s) after %d iterations, %.1fs up%s",
            self._label,
            self._pid,
            outcome.reason.value,
            outcome.detail,
            self._iterations,
            now - self._started_at if self._started else 0.0,
            f"; draining for {drain:g}s first" if drain > 0 else "",
        )
        if self._notifier is not None:
            self._call_quietly(self._notifier.stopping, f"stopping: {outcome.summary()}")
        if self._link is not None:
            self._link.report_stopping(outcome)
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
        monitor = self._monitor
        progress = monitor.progress_at if monitor is not None else self._started_at
        return policy.heartbeat_age(now, max(self._last_beat, progress), self._sleep_until)

    # ---------------------------------------------------------------- failures

    def record_failure(self, exc: BaseException | None = None) -> None:
        """Count a failed iteration; ``max_consecutive_failures`` in a row stops the worker.

        A failure one of the worker's circuits counted or refused (``exc``, or
        an exception it was raised from) is counted as a failed iteration but
        not towards the stop: the circuit holds that signal, and a restart
        would not bring the service back.
        """
        self._failed_iterations += 1
        if exc is not None and self._circuits:
            from .circuit import circuit_of

            if circuit_of(exc) in self._circuits:
                return
        self._consecutive_failures += 1
        if self._trace is not None:
            self._trace.failed(exc)
        cap = self.limits.max_failures
        if cap and self._consecutive_failures >= cap:
            last = f"; last: {exc!r}" if exc is not None else ""
            self._begin_stop(
                StopOutcome.decided(
                    StopReason.ITERATION_FAILURES,
                    f"{self._consecutive_failures} consecutive failed iterations, the limit{last}",
                    by=Ender.PROCGUARD,
                )
            )

    def record_success(self) -> None:
        """An iteration succeeded: the consecutive-failure count starts over."""
        self._consecutive_failures = 0

    # --------------------------------------------------------------- circuits

    def circuit(
        self,
        name: str,
        failure_threshold: int = 5,
        reset_timeout: float | str = 30.0,
        *,
        exclude: Collection[type[BaseException]] = (),
        required: bool = False,
        clock: Callable[[], float] | None = None,
    ) -> CircuitBreaker:
        """The worker's circuit breaker ``name``, created on first use (see :mod:`procguard.circuit`).

        Asking again for the same name returns the same breaker, so a
        function run every iteration (``procguard run module:fn``) can call
        this each time; asking with other settings is a UsageError. Its state
        shows on /health (reason), /ready (``required=True``: 503 while not
        closed) and /metrics, and each change is published at once.
        """
        from .circuit import CircuitBreaker

        options: dict[str, Any] = {"exclude": exclude, "required": required}
        if clock is not None:
            options["clock"] = clock
        wanted = CircuitBreaker(name, failure_threshold, reset_timeout, **options)
        existing = self._circuits.get(name)
        if existing is None:
            return self.add_circuit(wanted)
        settings = ("failure_threshold", "reset_timeout_s", "required", "exclude")
        differ = [key for key in settings if getattr(existing, key) != getattr(wanted, key)]
        if differ:
            msg = (
                f"circuit {name!r} is already registered with other settings "
                f"({', '.join(f'{key}={getattr(existing, key)!r}' for key in differ)})"
            )
            raise UsageError(msg)
        return existing

    def add_circuit(self, breaker: CircuitBreaker) -> CircuitBreaker:
        """Show a breaker created elsewhere (e.g. a module-level decorator) on this worker's surfaces.

        Returns ``breaker``; a different breaker of the same name is a UsageError.
        """
        existing = self._circuits.get(breaker.name)
        if existing is breaker:
            return breaker
        if existing is not None:
            msg = f"circuit {breaker.name!r} is already registered with this worker (use another name)"
            raise UsageError(msg)
        breaker.add_listener(self._on_circuit_change)
        # Replaced, never mutated: the health thread may be iterating over the old one.
        self._circuits = {**self._circuits, breaker.name: breaker}
        self._refresh_health()
        return breaker

    @property
    def circuits(self) -> tuple[CircuitBreaker, ...]:
        """The worker's registered circuit breakers, in the order they were added."""
        return tuple(self._circuits.values())

    def _circuit_snapshots(self) -> tuple[CircuitSnapshot, ...]:
        return tuple(breaker.snapshot() for breaker in self._circuits.values())

    def _on_circuit_change(self, breaker: CircuitBreaker, old: CircuitState, new: CircuitState) -> None:
        self._refresh_health()

    # ----------------------------------------------------------------- gauges

    def set_gauge(self, name: str, value: float) -> None:
        """Publish a figure of the program's own (``queue_depth``, ``jobs_in_flight``) on /metrics.

        Shown in the JSON under ``gauges`` and in Prometheus text as a gauge
        family ``name`` with the ``worker`` label (and ``copy`` for a copy of
        a worker under ``procguard up``); the value is the latest one set.
        Cheap enough to call every iteration (a dict store; the name is
        checked the first time only). This is what ``[workers.X.autoscale]``
        reads: the supervisor sums ``metric`` over the copies.

        ``name``: a Prometheus metric name not starting with ``procguard_``;
        ``value``: a finite number. Anything else raises UsageError.
        """
        gauges = self._gauges
        kind = value.__class__
        if name in gauges and (kind is int or (kind is float and value - value == 0.0)):
            gauges[name] = value  # the hot path: a known name, a finite number
            return
        self._set_new_gauge(name, value)

    def _set_new_gauge(self, name: str, value: float) -> None:
        """``set_gauge`` off its hot path: a new name, or a value that is not a plain int or float."""
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = float("nan")
        if number - number != 0.0:  # NaN or infinite, or no number at all
            msg = f"set_gauge: {value!r} is not a finite number (use an int or a float)"
            raise UsageError(msg)
        gauges = self._gauges
        if name in gauges:
            gauges[name] = number
            return
        _check_gauge_name(name)
        self._gauges = {**gauges, name: number}

    @property
    def gauges(self) -> dict[str, float]:
        """The program's gauges as set so far (a copy)."""
        return {name: float(value) for name, value in self._gauges.items()}

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
        stop = self._stop
        if stop is not None:
            return HealthStatus(False, f"stopping: {stop.outcome.reason.value} ({stop.outcome.detail})")
        age = self._heartbeat_age(now)
        timeout = self.limits.heartbeat_timeout_s
        if timeout is not None and age > timeout:
            return HealthStatus(False, f"heartbeat stale: {age:.1f}s old (timeout {timeout:g}s)")
        monitor = self._monitor
        if monitor is not None and monitor.breach:
            return HealthStatus(False, monitor.breach)
        # An open circuit leaves the worker healthy (a restart would not bring the service back): named only.
        degraded = circuits_health(self._circuit_snapshots()) if self._circuits else None
        return HealthStatus(True, degraded or HEALTHY)

    def readiness(self) -> HealthStatus:
        """Readiness: started, not draining or stopping, not marked not-ready."""
        if not self._started:
            return HealthStatus(False, "stopped" if self._shut_down else "not started")
        stop = self._stop
        if stop is not None:
            return HealthStatus(False, f"stopping: {stop.outcome.reason.value}")
        if not self._user_ready:
            return HealthStatus(False, self._user_ready_reason)
        blocked = circuits_readiness(self._circuit_snapshots()) if self._circuits else None
        if blocked:
            return HealthStatus(False, blocked)
        return HealthStatus(True, "ready")

    def snapshot(self) -> WorkerSnapshot:
        """The current figures as one value.

        Cheap (no system call: the monitor thread keeps the latest sample); the
        health server calls it on every request.
        """
        now = _monotonic()
        monitor = self._monitor
        s = monitor.latest if monitor is not None else None
        started = self._started
        uptime = (self._stopped_at or now) - self._started_at if self._started_at else 0.0
        remaining = None
        if self._deadline is not None and started:
            remaining = max(0.0, self._deadline - now)
        stop = self._stop
        lim = self.limits
        worker, stack = self._labels
        return WorkerSnapshot(
            name=worker,
            stack=stack,
            pid=self._pid,
            health=self.health(now),
            ready=self.readiness(),
            started=started,
            stopping=stop is not None,
            start_time_seconds=self._started_wall or None,
            uptime_seconds=uptime,
            cpu_percent=s.cpu_percent if s else 0.0,
            memory_bytes=s.memory_bytes if s else 0,
            memory_percent=s.memory_percent if s else 0.0,
            num_threads=s.num_threads if s else 0,
            num_children=s.num_children if s else 0,
            heartbeat_age_seconds=self._heartbeat_age(now) if started else None,
            iterations=self._iterations,
            failed_iterations=self._failed_iterations,
            max_iterations=lim.max_iterations,
            max_runtime_seconds=lim.max_runtime_s,
            remaining_seconds=remaining,
            memory_limit_bytes=lim.memory_limit_bytes,
            cpu_limit_percent=lim.cpu_limit_percent,
            stop_reason=stop.outcome.reason.value if stop is not None else None,
            circuits=self._circuit_snapshots(),
            gauges=tuple((name, float(value)) for name, value in self._gauges.items()),
            copy=_copy_index(),
        )

    def metrics(self) -> dict[str, Any]:
        """The ``/metrics`` JSON document (docs/HEALTH.md)."""
        return self.snapshot().to_metrics_json()

    # -------------------------------------------------------------- properties

    @property
    def stop_reason(self) -> StopReason | None:
        """Why the worker is stopping/stopped (None while running)."""
        stop = self._stop
        return stop.outcome.reason if stop is not None else None

    @property
    def stop_outcome(self) -> StopOutcome | None:
        """The whole stop: reason, detail with figures, exit status, who ended it (None while running).

        Final after :meth:`shutdown`; before, the stop decided so far.
        """
        if self._outcome is not None:
            return self._outcome
        stop = self._stop
        return stop.outcome if stop is not None else None

    @property
    def exit_status(self) -> int:
        """The exit status for the stop so far (final after :meth:`shutdown`)."""
        outcome = self._crash if self._outcome is None and self._crash is not None else self.stop_outcome
        if outcome is None or outcome.exit_status is None:
            return int(ExitStatus.OK)
        return outcome.exit_status

    @property
    def iterations(self) -> int:
        """Iterations begun (True returns of :meth:`should_continue`)."""
        return self._iterations

    @property
    def is_stopping(self) -> bool:
        """True once a stop was asked (also during the drain delay)."""
        return self._stop is not None

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
        completed = StopOutcome.decided(StopReason.COMPLETED, "the work loop ended", by=Ender.WORKER)
        ended = self._crash or completed
        self._begin_stop(ended)
        self._make_due()
        if self._trace is not None:
            self._trace.begin_shutdown()  # the cleanups' own spans nest under it

    def _crashed_with(self, exc: BaseException) -> None:
        """The work loop ended by ``exc``: a crash when it is an exception or a failing ``sys.exit``.

        Called by the context manager and by ``procguard run``'s loop, so the
        stop outcome (``crashed``, with the status the process will exit with)
        is the one its supervisor sees, not a clean ``completed``.
        """
        if isinstance(exc, SystemExit):
            code = exc.code
            if code is None or code == 0:
                return
            status = code if isinstance(code, int) and not isinstance(code, bool) else int(ExitStatus.ERROR)
            detail = f"the program exited with status {status}"
        elif isinstance(exc, Exception):
            status, detail = int(ExitStatus.ERROR), f"the work loop raised {type(exc).__name__}: {exc}"
        else:
            return  # KeyboardInterrupt and friends: a stop signal, not a crash
        self._crash = StopOutcome(StopReason.CRASHED, detail, exit_status=status, by=Ender.WORKER)
        if self._trace is not None:
            self._trace.crashed(exc)

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
        stop = self._stop
        assert stop is not None  # _prepare_shutdown made sure
        outcome = stop.outcome
        crash = self._crash
        if crash is not None and outcome is not crash:
            # It raised (or exited) while a stop was under way: the exit status says crash.
            outcome = crash.with_changes(detail=f"{crash.detail} while stopping for {outcome.reason}")
        self._outcome = outcome
        uptime = _monotonic() - self._started_at if self._started_at else 0.0
        log.info(
            "%s (pid %d) stopped: %s; %d iterations, %.1fs up",
            self._label,
            self._pid,
            outcome.summary(),
            self._iterations,
            uptime,
        )
        if self._link is not None:
            self._link.report_outcome(outcome)
        trace, self._trace = self._trace, None
        if trace is not None:
            trace.finish(outcome, self._iterations, grace_left_s=self._grace_left(stop))
        return self.exit_status

    def _grace_left(self, stop: StopRequest) -> float | None:
        """Seconds left of the stop's grace period (None: no grace limit)."""
        grace = self.limits.grace_s
        return stop.due_at + grace - _monotonic() if grace else None

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

    def _helper_pids(self) -> set[int]:
        """procguard's processes beside the worker (watchdog, health responder); new ones are reported."""
        helpers = set(self._helpers)
        responder = getattr(self._health_server, "responder_pid", None)
        if responder:
            helpers.add(responder)
        link = self._link
        if link is not None:
            for pid in helpers - self._reported_helpers:
                link.report_helper(pid)
            self._reported_helpers |= helpers
        return helpers

    # -------------------------------------------------------- context managers

    def __enter__(self) -> ProcessManager:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is not None:
            self._crashed_with(exc)
        self.shutdown()

    async def __aenter__(self) -> ProcessManager:
        return self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is not None:
            self._crashed_with(exc)
        await self.shutdown_async()


def _check_gauge_name(name: object) -> None:
    """UsageError unless ``name`` may name a program's gauge."""
    if not isinstance(name, str) or not GAUGE_NAME_RE.match(name) or name.startswith(RESERVED_GAUGE_PREFIX):
        msg = (
            f"set_gauge: {name!r} is not a gauge name (use {GAUGE_NAME_ACCEPTED};"
            f" {RESERVED_GAUGE_PREFIX}* is procguard's own)"
        )
        raise UsageError(msg)


def _copy_index() -> int | None:
    """This process's copy number (``PROCGUARD_INSTANCE_INDEX``), None when it is no copy."""
    text = os.environ.get(INDEX_ENV, "")
    return int(text) if text.isdigit() else None


def _keyword_of(setting: Setting) -> str:
    """The constructor keyword that names ``setting`` in an error message."""
    return _KEYWORD_OF.get(setting.key, setting.key)


class _Watched:
    """The manager as its monitor sees it (:class:`~procguard.monitor.Watched`): nothing more."""

    __slots__ = ("_m",)

    def __init__(self, manager: ProcessManager) -> None:
        self._m = manager

    @property
    def label(self) -> str:
        return self._m._label

    @property
    def pid(self) -> int:
        return self._m._pid

    @property
    def limits(self) -> WorkerLimits:
        return self._m.limits

    @property
    def sample_interval_s(self) -> float:
        return self._m.sample_interval_s

    @property
    def started_at(self) -> float:
        return self._m._started_at

    @property
    def deadline(self) -> float | None:
        return self._m._deadline

    @property
    def sampler(self) -> ResourceSampler | None:
        return self._m._sampler

    @property
    def signals(self) -> SignalCapture:
        signals = self._m._signals
        assert signals is not None  # the monitor runs only after start() set it
        return signals

    @property
    def iterations(self) -> int:
        return self._m._iterations

    @property
    def stop(self) -> StopRequest | None:
        return self._m._stop

    @property
    def stop_is_due(self) -> bool:
        return self._m._halt

    @property
    def shut_down(self) -> bool:
        return self._m._shut_down

    def heartbeat_age(self, now: float) -> float:
        return self._m._heartbeat_age(now)

    def begin_stop(self, outcome: StopOutcome, *, drain: float = 0.0) -> bool:
        return self._m._begin_stop(outcome, drain=drain)

    def make_due(self) -> None:
        self._m._make_due()

    def shutdown(self) -> int:
        return self._m.shutdown()

    def feed_watchdog(self) -> None:
        m = self._m
        if m._notifier is not None:
            m._call_quietly(m._notifier.watchdog)

    def helper_pids(self) -> set[int]:
        return self._m._helper_pids()

    def signal_stop(self, signum: int) -> StopOutcome:
        return stop_for_signal(signum, self._m._link)

    def report(self, outcome: StopOutcome) -> None:
        link = self._m._link
        if link is not None:
            link.report_outcome(outcome)
