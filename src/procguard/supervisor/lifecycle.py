"""Every transition of a worker: spawn, exit, restart or not, stop, recycle, probe verdict.

The event loop (:mod:`.supervisor`) calls in here when something happened
to one worker (its process exited, a timer expired, a sample or a probe
result came in, someone asked for a stop); :class:`Lifecycle` moves the
worker through :mod:`.states`, carries out the restart decision of
:func:`.backoff.decide` and the limit verdicts of
:class:`procguard.policy.LimitTracker`, and records each start and stop in
the history. Which deadline comes next (:func:`next_deadline`) and whether
a worker may start (:func:`deps_ready`) are pure functions of the workers.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable, Mapping

from ..policy import needs_close_watch
from .backoff import Action, Exit, decide
from .history import Event, History
from .leftovers import LeftoverGroups
from .probe import ProbeResult
from .procscan import LimitSample
from .settings import Settings
from .states import WorkerState
from .watchdog import WatchdogLink
from .worker import Worker

logger = logging.getLogger(__name__)

#: Extra time a worker run through `procguard run` gets to stop its own child after grace.
RUNNER_EXIT_MARGIN_S = 1.0

S = WorkerState

_MB = 1024 * 1024


def next_deadline(worker: Worker, start_period_s: float) -> float | None:
    """When this worker's next timer fires (restart, start period over, stop overdue), if any."""
    if worker.state is S.BACKOFF and worker.next_start_at is not None:
        return worker.next_start_at
    if worker.state is S.STARTING and worker.started_at is not None:
        return worker.started_at + start_period_s
    if worker.state is S.STOPPING and worker.stop_deadline is not None:
        return worker.stop_deadline
    return None


def deps_ready(worker: Worker, workers: Mapping[str, Worker]) -> bool:
    """True when every worker ``worker`` depends on runs, or is stopped and not coming."""
    for dep_name in worker.config.depends_on:
        dep = workers[dep_name]
        if dep.state is S.RUNNING:
            continue
        if dep.state in (S.STOPPED, S.FATAL) and not dep.want_start:
            continue  # not coming: do not wait for it forever
        return False
    return True


class Lifecycle:
    """Carries out each worker's transitions; ``exiting`` is set once the whole stack is stopping.

    What it needs from the loop that owns the workers: ``on_spawned(worker)``
    watches the new process's output pipe; ``on_changed()`` is told whenever
    a worker gained or lost a process (the probe targets change).
    """

    def __init__(
        self,
        *,
        project: str,
        settings: Settings,
        history: History,
        leftovers: LeftoverGroups,
        watchdog: WatchdogLink,
        on_spawned: Callable[[Worker], None],
        on_changed: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.project = project
        self.settings = settings
        self.history = history
        self.exiting = False
        self._leftovers = leftovers
        self._watchdog = watchdog
        self._on_spawned = on_spawned
        self._on_changed = on_changed
        self._clock = clock
        self._wall = wall_clock

    # -- timers ------------------------------------------------------------------

    def tick(self, worker: Worker, now: float) -> None:
        """Act on this worker's timer if it is due: running after the start period, restart, kill."""
        state = worker.state
        if state is S.STARTING and worker.started_at is not None:
            if now - worker.started_at >= self.settings.start_period_s:
                worker.set_state(S.RUNNING)
                logger.info("%s: running (pid %s)", worker.name, worker.pid)
        elif state is S.BACKOFF and worker.next_start_at is not None and now >= worker.next_start_at:
            self.spawn(worker, now)
        elif state is S.STOPPING and worker.stop_deadline is not None and now >= worker.stop_deadline:
            logger.warning(
                "%s: did not stop within %.1fs (drain + grace), killing its process group (pid %s)",
                worker.name,
                worker.config.grace_s + worker.config.drain_delay_s,
                worker.pid,
            )
            worker.signal(signal.SIGKILL, group=True)
            worker.stop_deadline = None

    # -- starting ------------------------------------------------------------------

    def spawn(self, worker: Worker, now: float) -> None:
        """Start the worker's process now; a spawn that fails is an exit with status 127."""
        worker.set_state(S.STARTING)
        worker.next_start_at = None
        wall = self._wall()
        try:
            pid = worker.spawn(now, wall)
        except OSError as error:
            logger.error("%s: cannot start: %s", worker.name, error)
            worker.output.note(f"cannot start: {error}")
            exit_ = Exit(status=127, cause=f"cannot start: {error.strerror or error}")
            worker.last_exit = {
                "status": 127,
                "signal": None,
                "reason": exit_.reason,
                "time": wall,
                "runtime_seconds": 0.0,
            }
            self._record_stop(worker, wall, pid=None, reason=exit_.reason, exit_status=127, runtime_s=0.0)
            self._after_exit(worker, exit_, now)
            return
        self._on_spawned(worker)
        self._watchdog.watch(pid)
        self._on_changed()
        self.history.record(Event(self.project, worker.name, wall, "start", pid=pid))
        logger.info("%s: started (pid %s)", worker.name, pid)
        self.notify_waiters(worker)

    # -- exits -----------------------------------------------------------------------

    def exited(self, worker: Worker, wait_status: int) -> None:
        """The worker's process was reaped with ``wait_status``: record it, then restart or not."""
        now, wall = self._clock(), self._wall()
        pid = worker.pid
        was_stopping = worker.state is S.STOPPING
        peak = worker.peak_memory_bytes or None
        exit_ = worker.exited(wait_status, now, wall)
        if pid is not None:
            # Members of its group may remain (children it did not stop): stop them too.
            self._leftovers.add(pid, now)
        reason = exit_.reason
        if was_stopping and exit_.cause is None and not exit_.is_recycle:
            reason = "requested"
        self._record_stop(
            worker,
            wall,
            pid=pid,
            reason=reason,
            exit_status=exit_.status if exit_.status is not None else -(exit_.signal or 0),
            runtime_s=round(exit_.runtime_s, 3),
            peak_memory_bytes=peak,
        )
        assert worker.last_exit is not None
        worker.last_exit["reason"] = reason
        worker.output.note(f"exited ({reason}) after {exit_.runtime_s:.1f}s")
        self._on_changed()
        if was_stopping and not worker.stop_cause:
            self._stopped_on_request(worker, reason, now)
        else:
            self._after_exit(worker, exit_, now)

    def _record_stop(
        self,
        worker: Worker,
        wall: float,
        *,
        pid: int | None,
        reason: str,
        exit_status: int,
        runtime_s: float,
        peak_memory_bytes: int | None = None,
    ) -> None:
        self.history.record(
            Event(
                self.project,
                worker.name,
                wall,
                "stop",
                pid=pid,
                reason=reason,
                exit_status=exit_status,
                runtime_seconds=runtime_s,
                peak_memory_bytes=peak_memory_bytes,
            )
        )

    def _stopped_on_request(self, worker: Worker, reason: str, now: float) -> None:
        logger.info("%s: stopped (%s)", worker.name, reason)
        worker.set_state(S.STOPPED)
        if worker.restart_after_stop and not self.exiting:
            worker.restart_after_stop = False
            worker.restarts += 1
            self.spawn(worker, now)
            return
        worker.restart_after_stop = False
        self.notify_waiters(worker)

    def _after_exit(self, worker: Worker, exit_: Exit, now: float) -> None:
        if self.exiting:
            worker.set_state(S.STOPPED)
            self.notify_waiters(worker)
            return
        decision, worker.record = decide(worker.policy, worker.record, exit_, now)
        if decision.action is Action.FATAL:
            logger.error(
                "%s: %s; %d failed starts within %.0fs, giving up (FATAL until 'procguard start %s')",
                worker.name,
                exit_.reason,
                len(worker.record.failure_times),
                worker.policy.start_limit_interval_s,
                worker.name,
            )
            worker.output.note("start limit reached: FATAL")
            worker.set_state(S.FATAL)
            self.notify_waiters(worker)
        elif decision.action is Action.STOP:
            logger.info(
                "%s: exited (%s); restart policy %s leaves it stopped",
                worker.name,
                exit_.reason,
                worker.policy.restart,
            )
            worker.set_state(S.STOPPED)
            self.notify_waiters(worker)
        elif decision.delay_s <= 0:
            log = logger.info if not decision.counted else logger.warning
            log("%s: exited (%s), restarting now", worker.name, exit_.reason)
            worker.restarts += 1
            self.spawn(worker, now)
        else:
            logger.warning(
                "%s: exited (%s), restarting in %.1fs", worker.name, exit_.reason, decision.delay_s
            )
            worker.restarts += 1
            worker.set_state(S.BACKOFF)
            worker.next_start_at = now + decision.delay_s
            self.notify_waiters(worker)

    # -- stopping ----------------------------------------------------------------------

    def request_stop(
        self, worker: Worker, now: float, *, cause: str | None = None, planned: bool = False
    ) -> None:
        """Ask ``worker`` to stop: SIGTERM now, SIGKILL to its group after drain + grace.

        ``cause`` is set when the supervisor itself decided the stop (a limit,
        a failed probe); ``planned`` makes it a recycle rather than a failure.
        """
        worker.want_start = False
        if worker.state in (S.BACKOFF, S.FATAL):
            worker.next_start_at = None
            worker.set_state(S.STOPPED)
            self.notify_waiters(worker)
            return
        if not worker.state.has_process:
            self.notify_waiters(worker)
            return
        if worker.state is S.STOPPING:
            if cause is None:  # a request overrides a recycle in progress: do not restart it
                worker.stop_cause, worker.stop_planned = None, False
            return
        worker.set_state(S.STOPPING)
        worker.stop_cause = cause
        worker.stop_planned = planned
        # The worker drains first (still working, not ready), then has its grace;
        # a runner needs a moment more to stop its own child before it exits.
        budget = worker.config.grace_s + worker.config.drain_delay_s
        worker.stop_deadline = now + budget + (RUNNER_EXIT_MARGIN_S if worker.via_runner else 0.0)
        logger.info("%s: stopping (pid %s%s)", worker.name, worker.pid, f", {cause}" if cause else "")
        worker.signal(signal.SIGTERM, group=worker.group_signals)

    # -- what the loop observes ------------------------------------------------------------

    def sample(self, worker: Worker, now: float, wall: float, *, regular: bool = True) -> None:
        """Read the worker's tree; recycle a directly run command at its memory/CPU/runtime limit.

        ``regular`` is False for the fast samples of a closely watched worker
        (:func:`procguard.policy.needs_close_watch`); after each sample ``worker.close_watch`` says
        whether the next one should come at the fast pace. A soft-limit
        verdict is a graceful recycle (SIGTERM, then grace); the hard ceiling
        kills, even during a stop already under way.
        """
        if not worker.state.has_process or worker.sampler is None:
            worker.close_watch = False
            return
        sample = worker.sampler.sample()
        if sample is None:
            worker.close_watch = False
            return
        previous = worker.observe(sample, now, wall, chart=regular)
        tracker = worker.limits
        if tracker is None:
            return
        limits = tracker.limits
        worker.close_watch = needs_close_watch(
            sample.memory_bytes,
            soft_bytes=limits.memory_soft_bytes,
            strikes=tracker.memory_strikes,
            previous=previous,
            now=now,
            horizon_s=self.settings.sample_interval_s,
            near_fraction=self.settings.close_watch_fraction,
        )
        if worker.state is S.STOPPING:
            hard = limits.memory_hard_bytes
            if hard and sample.memory_bytes > hard and not worker.hard_killed:
                logger.warning(
                    "%s: memory %.1f MB over the hard ceiling %.1f MB while stopping: "
                    "killing its group (pid %s)",
                    worker.name,
                    sample.memory_bytes / _MB,
                    hard / _MB,
                    worker.pid,
                )
                worker.hard_killed = True
                worker.signal(signal.SIGKILL, group=True)
            return
        verdict = tracker.observe(LimitSample(sample), now)
        if verdict is not None:
            logger.warning("%s: %s: recycling", worker.name, verdict.detail)
            self.request_stop(worker, now, cause=str(verdict.reason), planned=True)
            if verdict.hard:
                worker.hard_killed = True
                worker.signal(signal.SIGKILL, group=True)
            return
        runtime = worker.config.max_runtime_s
        if (
            worker.supervised_from_outside
            and runtime is not None
            and worker.started_at is not None
            and now - worker.started_at >= runtime
        ):
            logger.info("%s: reached max runtime %.0fs: recycling", worker.name, runtime)
            self.request_stop(worker, now, cause="max_runtime", planned=True)

    def probe_result(self, worker: Worker, result: ProbeResult, now: float) -> None:
        """Count a failed liveness probe; stop the worker (a failure) after the threshold in a row."""
        if worker.generation != result.generation or worker.state not in (S.STARTING, S.RUNNING):
            return  # about a process that has gone since
        worker.probe_detail = result.detail
        if result.ok:
            worker.probe_failures = 0
            return
        worker.probe_failures += 1
        logger.warning(
            "%s: health probe failed (%d/%d): %s",
            worker.name,
            worker.probe_failures,
            self.settings.probe_failure_threshold,
            result.detail,
        )
        if worker.probe_failures >= self.settings.probe_failure_threshold and not self.exiting:
            self.request_stop(worker, now, cause="liveness", planned=False)

    def notify_waiters(self, worker: Worker) -> None:
        """Answer the control clients waiting for this worker's transition."""
        waiters, worker.waiters = worker.waiters, []
        for waiter in waiters:
            waiter(worker)
