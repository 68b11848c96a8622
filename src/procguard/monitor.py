"""The manager's one background thread: samples, limits, signals, drain, grace, watchdog.

The work loop's hot path only reads and writes attributes; everything that
needs a system call or a clock comparison over time happens here instead.
The thread wakes every ``sample_interval_s`` (faster while memory is near or
over the limit, :func:`procguard.policy.next_sample_delay`), or at once when
a signal is recorded or a stop is requested (both write to the
:class:`~procguard.signals.SignalCapture` wakeup pipe it ``select``\\s on).
Each wake-up it:

- turns recorded stop signals into a graceful stop (first) or an immediate
  exit (second);
- ends a drain delay that has run out (from then on the loop sees the stop);
- samples memory/CPU (:mod:`procguard.sampler`), applies the limits
  (:mod:`procguard.policy`), and stops for max runtime or a stale heartbeat;
- feeds the systemd watchdog while the loop is alive;
- ends the process (:mod:`procguard.emergency_exit`) when a graceful stop
  overran its grace or the hard memory ceiling was crossed.

The monitor knows the manager only through :class:`Watched`, a narrow
protocol: the figures it needs and the few actions it may take. What it
finds (the latest sample, a limit being breached, the last progress) it
keeps in its own attributes for the manager to read.
"""

from __future__ import annotations

import logging
import select
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn, Protocol

from . import policy
from .emergency_exit import exit_now
from .limits import WorkerLimits
from .outcome import StopOutcome
from .reasons import Ender, StopReason, signal_name
from .signals import STOP_SIGNALS, SignalCapture

if TYPE_CHECKING:
    from .sampler import ResourceSample, ResourceSampler

log = logging.getLogger(__name__)

_MB = 1024 * 1024


def format_mb(n: float) -> str:
    """``"512.0 MB"``: bytes as the mebibytes our log lines and health reasons show."""
    return f"{n / _MB:.1f} MB"


@dataclass(frozen=True)
class StopRequest:
    """A stop decided and not yet done: why (the outcome so far), when, and when it is due.

    ``due_at`` is later than ``asked_at`` by the drain delay (a stop signal
    with ``drain_delay_s``); the grace counts from ``due_at``.
    """

    outcome: StopOutcome
    asked_at: float
    due_at: float


class Watched(Protocol):
    """What the monitor reads from, and may do to, the manager it watches."""

    @property
    def label(self) -> str: ...

    @property
    def pid(self) -> int: ...

    @property
    def limits(self) -> WorkerLimits: ...

    @property
    def sample_interval_s(self) -> float: ...

    @property
    def started_at(self) -> float: ...

    @property
    def deadline(self) -> float | None: ...

    @property
    def sampler(self) -> ResourceSampler | None: ...

    @property
    def signals(self) -> SignalCapture: ...

    @property
    def iterations(self) -> int: ...

    @property
    def stop(self) -> StopRequest | None: ...

    @property
    def stop_is_due(self) -> bool: ...

    @property
    def shut_down(self) -> bool: ...

    def heartbeat_age(self, now: float) -> float: ...

    def begin_stop(self, outcome: StopOutcome, *, drain: float = 0.0) -> bool: ...

    def make_due(self) -> None: ...

    def shutdown(self) -> int: ...

    def feed_watchdog(self) -> None: ...

    def helper_pids(self) -> set[int]: ...

    def signal_stop(self, signum: int) -> StopOutcome: ...

    def report(self, outcome: StopOutcome) -> None: ...


class Monitor(threading.Thread):
    """The background thread of one started :class:`~procguard.manager.ProcessManager`.

    Not a daemon when started from the main thread (``watch_main``): when the
    main thread then ends without ``shutdown()`` (forgotten, or an uncaught
    exception), the interpreter waits for this thread, which notices and
    shuts the manager down while Python is still whole (before atexit
    handlers such as multiprocessing's, which would wait for our children).
    """

    def __init__(
        self, watched: Watched, *, watch_main: bool, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__(name=f"procguard-monitor-{watched.label}", daemon=not watch_main)
        self._w = watched
        self._watch_main = watch_main
        self._clock = clock
        self._end_requested = False
        self._signals_seen = watched.signals.count  # ones recorded before the start are the manager's
        self._seen_iterations = 0
        self._tracker = policy.LimitTracker(watched.limits, started_at=watched.started_at)
        #: Kept current here, read by the manager's health() and snapshot().
        self.latest: ResourceSample | None = None
        self.breach: str | None = None
        self.progress_at = watched.started_at

    def stop(self) -> None:
        """Ask the loop to end at its next wake-up (the caller wakes it, then joins)."""
        self._end_requested = True

    def run(self) -> None:
        w = self._w
        if hasattr(signal, "pthread_sigmask"):
            # Stop signals go to the main thread, where they interrupt sleeps and selects.
            signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        signals = w.signals
        fd = signals.wakeup_fd
        main = threading.main_thread()
        next_sample = self._clock() + w.sample_interval_s
        while not self._end_requested:
            now = self._clock()
            timeout = max(0.0, next_sample - now)
            pending = w.stop
            if pending is not None and not w.stop_is_due:
                timeout = min(timeout, max(0.0, pending.due_at - now))
            try:
                readable, _, _ = select.select([fd], [], [], timeout)
            except (OSError, ValueError):  # fd closed under us at shutdown
                return
            if readable:
                signals.drain()
            if self._end_requested:
                return
            if self._watch_main and not main.is_alive() and not w.shut_down:
                log.info(
                    "%s (pid %d): the main thread ended without shutdown(); shutting down", w.label, w.pid
                )
                w.shutdown()
                return
            try:
                now = self._clock()
                self._check_signals()
                pending = w.stop
                if pending is not None and not w.stop_is_due and now >= pending.due_at:
                    w.make_due()
                if now >= next_sample:
                    next_sample = now + self._tick(now)
                self._check_grace(now)
            except Exception:  # never let the monitor die silently
                log.exception("%s (pid %d): monitor error", w.label, w.pid)

    def _check_grace(self, now: float) -> None:
        w = self._w
        pending = w.stop
        if pending is None or w.shut_down or not policy.grace_exceeded(now, pending.due_at, w.limits.grace_s):
            return
        overrun = now - pending.due_at
        self._exit_now(
            StopReason.GRACE_EXCEEDED,
            f"the graceful stop ({pending.outcome.reason}: {pending.outcome.detail}) still ran "
            f"{overrun:.1f}s after it began, grace {w.limits.grace_s:g}s",
        )

    def _check_signals(self) -> None:
        w = self._w
        sig = w.signals
        if sig.count == self._signals_seen:
            return
        self._signals_seen = sig.count
        if sig.count >= 2:
            self._exit_now(
                StopReason.GRACE_EXCEEDED,
                f"second stop signal ({signal_name(sig.last_signum)}) during a graceful stop",
            )
        w.begin_stop(w.signal_stop(sig.first_signum or signal.SIGTERM), drain=w.limits.drain_delay_s)

    def _tick(self, now: float) -> float:
        """One sample and the checks that follow it; returns the delay until the next one."""
        w = self._w
        sampler, tracker = w.sampler, self._tracker
        delay = w.sample_interval_s
        if sampler is not None:
            # procguard's own helpers (the health responder) are not the worker's.
            sampler.set_excluded(w.helper_pids())
            try:
                sample = sampler.sample()
            except Exception:
                log.debug("sampling failed", exc_info=True)
            else:
                previous = self.latest
                self.latest = sample
                verdict = tracker.observe(sample, now)
                self.breach = self._describe_breach(sample, now)
                if verdict is not None:
                    if verdict.hard:
                        self._exit_now(verdict.reason, verdict.detail, verdict.figures)
                    w.begin_stop(
                        StopOutcome.decided(
                            verdict.reason, verdict.detail, by=Ender.PROCGUARD, figures=verdict.figures
                        )
                    )
                delay = policy.next_sample_delay(
                    sample.memory_bytes,
                    limits=w.limits,
                    strikes=tracker.memory_strikes,
                    previous=None if previous is None else (previous.taken_at, previous.memory_bytes),
                    now=sample.taken_at,
                    regular_s=w.sample_interval_s,
                )
        iterations = w.iterations
        if iterations != self._seen_iterations:  # a new iteration began: progress
            self._seen_iterations = iterations
            self.progress_at = now
        if w.deadline is not None and now >= w.deadline:
            w.begin_stop(
                StopOutcome.decided(
                    StopReason.MAX_RUNTIME,
                    policy.runtime_detail(now, w.started_at, w.deadline, w.limits.max_runtime_s),
                    by=Ender.PROCGUARD,
                )
            )
        age = w.heartbeat_age(now)
        timeout = w.limits.heartbeat_timeout_s
        if timeout is not None and age > timeout:
            w.begin_stop(
                StopOutcome.decided(
                    StopReason.HEARTBEAT_TIMEOUT,
                    f"no heartbeat for {age:.1f}s, timeout {timeout:g}s",
                    by=Ender.PROCGUARD,
                )
            )
        elif w.stop is None:
            w.feed_watchdog()
        return delay

    def _describe_breach(self, sample: ResourceSample, now: float) -> str | None:
        """The health reason while a limit is exceeded (before its strikes stop the worker)."""
        limits = self._w.limits
        if self._tracker.over_soft_memory(sample):
            limit = format_mb(limits.memory_limit_bytes or 0)
            return f"memory {format_mb(sample.memory_bytes)} over the limit {limit}"
        if self._tracker.over_cpu(sample, now):
            return f"CPU {sample.cpu_percent:.1f}% over the limit {limits.cpu_limit_percent:g}%"
        return None

    def _exit_now(self, reason: StopReason, detail: str, figures: dict[str, float] | None = None) -> NoReturn:
        w = self._w
        outcome = StopOutcome.decided(reason, detail, by=Ender.PROCGUARD, figures=figures)
        exit_now(outcome, label=w.label, pid=w.pid, sampler=w.sampler, report=w.report)
