"""The manager's one background thread: samples, limits, signals, drain, grace, watchdog.

The work loop's hot path only reads and writes attributes; everything that
needs a system call or a clock comparison over time happens here instead.
The thread wakes every ``sample_interval_s`` (faster while memory is over
the soft limit), or at once when a signal is recorded or a stop is requested
(both write to the :class:`~procguard.signals.SignalCapture` wakeup pipe it
``select``\\s on). Each wake-up it:

- turns recorded stop signals into a graceful stop (first) or an immediate
  exit (second);
- ends a drain delay that has run out (from then on the loop sees the stop);
- samples memory/CPU (:mod:`procguard.sampler`), applies the limits
  (:mod:`procguard.policy`), and stops for max runtime or a stale heartbeat;
- feeds the systemd watchdog while the loop is alive;
- ends the process (:mod:`procguard.emergency_exit`) when a graceful stop
  overran ``grace_s`` or the hard memory ceiling was crossed.

The monitor is the manager's other half, not a general-purpose component: it
reads and writes the manager's state as plain attributes (each one has a
single writer, so no lock is needed) and stops it through the manager's own
methods, so that a stop decided here is logged and published exactly like
one asked for by the program.
"""

from __future__ import annotations

import logging
import select
import signal
import threading
import time
from typing import TYPE_CHECKING, NoReturn

from . import policy
from .emergency_exit import exit_now
from .reasons import ExitStatus, StopReason
from .signals import STOP_SIGNALS, signal_name

if TYPE_CHECKING:
    from .manager import ProcessManager
    from .sampler import ResourceSample

log = logging.getLogger(__name__)

_monotonic = time.monotonic
_MB = 1024 * 1024

#: While memory is over the soft limit, samples come this many times faster.
FAST_SAMPLE_DIVISOR = 5


def format_mb(n: float) -> str:
    """``"512.0 MB"``: bytes as the mebibytes our log lines and health reasons show."""
    return f"{n / _MB:.1f} MB"


class Monitor(threading.Thread):
    """The background thread of one started :class:`~procguard.manager.ProcessManager`.

    Not a daemon when started from the main thread (``watch_main``): when the
    main thread then ends without ``shutdown()`` (forgotten, or an uncaught
    exception), the interpreter waits for this thread, which notices and
    shuts the manager down while Python is still whole (before atexit
    handlers such as multiprocessing's, which would wait for our children).
    """

    def __init__(self, manager: ProcessManager, *, watch_main: bool) -> None:
        super().__init__(name=f"procguard-monitor-{manager._label}", daemon=not watch_main)
        self._manager = manager
        self._watch_main = watch_main
        self._end_requested = False
        self._signals_seen = 0
        self._seen_iterations = 0
        self._tracker = policy.LimitTracker(manager.limits, started_at=manager._started_at)

    def stop(self) -> None:
        """Ask the loop to end at its next wake-up (the caller wakes it, then joins)."""
        self._end_requested = True

    def run(self) -> None:
        m = self._manager
        if hasattr(signal, "pthread_sigmask"):
            # Stop signals go to the main thread, where they interrupt sleeps and selects.
            signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        signals = m._signals
        assert signals is not None
        fd = signals.wakeup_fd
        interval = m.sample_interval_s
        main = threading.main_thread()
        next_sample = _monotonic() + interval
        while not self._end_requested:
            now = _monotonic()
            timeout = max(0.0, next_sample - now)
            due_at = m._stop_due_at
            if due_at is not None and not m._halt:
                timeout = min(timeout, max(0.0, due_at - now))
            try:
                readable, _, _ = select.select([fd], [], [], timeout)
            except (OSError, ValueError):  # fd closed under us at shutdown
                return
            if readable:
                signals.drain()
            if self._end_requested:
                return
            if self._watch_main and not main.is_alive() and not m._shut_down:
                log.info(
                    "%s (pid %d): the main thread ended without shutdown(); shutting down",
                    m._label,
                    m._pid,
                )
                m.shutdown()
                return
            try:
                now = _monotonic()
                self._check_signals()
                due_at = m._stop_due_at
                if due_at is not None and not m._halt and now >= due_at:
                    m._make_due()
                if now >= next_sample:
                    self._tick(now)
                    next_sample = now + self._next_interval(interval)
                if policy.grace_exceeded(now, m._stop_asked_at, m.grace_s) and not m._shut_down:
                    overrun = now - (m._stop_asked_at or now)
                    self._exit_now(
                        ExitStatus.GRACE_EXCEEDED,
                        f"graceful stop ({m._stop_reason}) still running {overrun:.1f}s "
                        f"after it was asked, grace {m.grace_s:g}s",
                    )
            except Exception:  # never let the monitor die silently
                log.exception("%s (pid %d): monitor error", m._label, m._pid)

    def _next_interval(self, interval: float) -> float:
        """Sample faster while memory is over the soft limit, so the strikes take a fraction of the time.

        A worker over its limit is either about to be stopped or spiking; counting
        its strikes at 1/5 of the interval means a 100 MB/s leak reaches the
        graceful stop before the hard ceiling, at no cost while all is well.
        """
        if self._tracker.memory_strikes > 0:
            return interval / FAST_SAMPLE_DIVISOR
        return interval

    def _check_signals(self) -> None:
        m = self._manager
        sig = m._signals
        if sig is None or sig.count == self._signals_seen:
            return
        self._signals_seen = sig.count
        if sig.count >= 2:
            self._exit_now(
                ExitStatus.GRACE_EXCEEDED,
                f"second stop signal ({signal_name(sig.last_signum)}) during a graceful stop",
            )
        m._begin_stop(
            StopReason.SIGNAL,
            f"received {signal_name(sig.first_signum)}",
            signum=sig.first_signum,
            drain=m.drain_delay_s,
        )

    def _tick(self, now: float) -> None:
        m = self._manager
        sampler, tracker = m._sampler, self._tracker
        server = m._health_server
        if sampler is not None and server is not None:
            # The health responder process is procguard's, not the worker's: not counted.
            responder = getattr(server, "responder_pid", None)
            sampler.set_excluded({responder} if responder else set())
        if sampler is not None:
            try:
                sample = sampler.sample()
            except Exception:
                log.debug("sampling failed", exc_info=True)
            else:
                m._latest = sample
                verdict = tracker.observe(sample, now)
                m._breach = self._describe_breach(sample, now)
                if verdict is not None:
                    if verdict.hard:
                        self._exit_now(ExitStatus.MEMORY_HARD_LIMIT, verdict.detail)
                    m._begin_stop(verdict.reason, verdict.detail)
        iterations = m._iterations
        if iterations != self._seen_iterations:  # a new iteration began: progress
            self._seen_iterations = iterations
            m._progress_at = now
        if m._deadline is not None and now >= m._deadline:
            m._begin_stop(
                StopReason.MAX_RUNTIME,
                f"ran {now - m._started_at:.1f}s, max runtime {m.max_runtime_s:g}s",
            )
        age = m._heartbeat_age(now)
        stale = m.heartbeat_timeout_s is not None and age > m.heartbeat_timeout_s
        if stale:
            m._begin_stop(
                StopReason.HEARTBEAT_TIMEOUT,
                f"no heartbeat for {age:.1f}s, timeout {m.heartbeat_timeout_s:g}s",
            )
        elif m._notifier is not None and not m._stop_event.is_set():
            m._call_quietly(m._notifier.watchdog)

    def _describe_breach(self, sample: ResourceSample, now: float) -> str | None:
        """The health reason while a limit is exceeded (before its strikes stop the worker)."""
        m = self._manager
        if self._tracker.over_soft_memory(sample):
            limit = format_mb(m.memory_limit_bytes or 0)
            return f"memory {format_mb(sample.memory_bytes)} over the limit {limit}"
        if self._tracker.over_cpu(sample, now):
            return f"CPU {sample.cpu_percent:.1f}% over the limit {m.cpu_limit_percent:g}%"
        return None

    def _exit_now(self, status: int, detail: str) -> NoReturn:
        m = self._manager
        exit_now(status, detail, label=m._label, pid=m._pid, sampler=m._sampler)
