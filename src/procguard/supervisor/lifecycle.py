"""Every transition of a worker: spawn, exit, restart or not, stop, recycle, probe verdict.

The event loop (:mod:`.supervisor`) calls in here when something happened
to one worker (its process exited, a timer expired, a sample or a probe
result came in, someone asked for a stop); :class:`Lifecycle` moves the
worker through :mod:`.states`, carries out the restart decision of
:func:`.backoff.decide` and the limit verdicts of
:class:`procguard.policy.LimitTracker`, and records each start and stop.

Every stop ends in one :class:`~procguard.outcome.StopOutcome`
(:func:`procguard.outcome.outcome_of_exit` over the stop the supervisor
asked for, what the worker reported through its link, and how the process
ended), and :meth:`Lifecycle.exited` renders that one value everywhere: the
history row, ``last_exit`` (status, page), the note in the worker's log,
the log line, and the stop counter by reason. Which deadline comes next
(:func:`next_deadline`) and whether a worker may start (:func:`deps_ready`)
are pure functions of the workers.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable, Mapping

from ..errors import UsageError
from ..outcome import StopOutcome, outcome_of_exit
from ..policy import next_sample_delay, runtime_detail
from ..reasons import STOP_SIGNUMS, Ender, StopReason, signal_name
from .backoff import Action, decide
from .history import Event, History
from .leftovers import LeftoverGroups
from .probe import ProbeResult
from .procscan import LimitSample
from .settings import Settings
from .states import WorkerState
from .watchdog import WatchdogLink
from .worker import Worker, last_exit_json

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
    if worker.state is S.STOPPING:
        due = [t for t in (worker.term_at, worker.stop_deadline) if t is not None]
        return min(due) if due else None
    return None


def deps_ready(
    worker: Worker, workers: Mapping[str, Worker], answers_ready: Callable[[Worker], bool] = lambda dep: True
) -> bool:
    """True when every copy of every worker ``worker`` depends on is there, or is stopped and not coming.

    "There" is what ``depends_on`` asks of it: running (alive through its
    start period), or for ``{ X = "ready" }`` running with ``answers_ready(copy)``
    (its health port's /ready answers 200 now).
    """
    for dep in workers.values():
        if dep.group not in worker.config.depends_on:
            continue
        if dep.state in (S.STOPPED, S.FATAL) and not dep.want_start:
            continue  # not coming: do not wait for it forever
        if worker.config.waits_for_ready(dep.group):
            if dep.state in (S.STARTING, S.RUNNING) and answers_ready(dep):
                continue
            return False
        if dep.state is not S.RUNNING:
            return False
    return True


def waits_for_readiness(worker: Worker) -> bool:
    """True while ``worker`` is to start once a dependency's /ready answers 200 (the loop polls for it)."""
    return worker.want_start and "ready" in worker.config.depends_on.values()


def operator_stop(detail: str) -> StopOutcome:
    """The stop an operator asked for (``procguard stop``, ``down``, ``restart``, a signal to ``up``)."""
    return StopOutcome.decided(StopReason.STOPPED, detail, by=Ender.OPERATOR)


class Lifecycle:
    """Carries out each worker's transitions; ``exiting`` is set once the whole stack is stopping.

    What it needs from the loop that owns the workers: ``on_spawned(worker)``
    watches the new process's output pipe and link; ``on_changed()`` is told
    whenever a worker gained or lost a process (the probe targets change);
    ``open_health(worker)`` binds the health port the supervisor serves for a
    command worker, right before its spawn (a UsageError fails that start);
    ``release_health(worker)`` lets it go when new settings need another;
    ``may_spawn(worker)`` is False while another worker still holds the health
    port the worker's (new) settings name.
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
        open_health: Callable[[Worker], None] = lambda worker: None,
        release_health: Callable[[Worker], None] = lambda worker: None,
        may_spawn: Callable[[Worker], bool] = lambda worker: True,
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
        self._open_health = open_health
        self._release_health = release_health
        self.may_spawn = may_spawn
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
        elif state is S.STOPPING and worker.term_at is not None and now >= worker.term_at:
            worker.term_at = None
            logger.info("%s: drain over, sending %s (pid %s)", worker.name,
                        signal_name(worker.stop_signum), worker.pid)
            worker.signal(worker.stop_signum, group=worker.group_signals)
        if state is S.STOPPING and worker.stop_deadline is not None and now >= worker.stop_deadline:
            logger.warning(
                "%s: did not stop within %.1fs (drain + grace), killing its process group (pid %s)",
                worker.name,
                worker.config.limits.stop_budget_s,
                worker.pid,
            )
            worker.killed_after_grace = True
            worker.signal(signal.SIGKILL, group=True)
            worker.stop_deadline = None

    # -- starting ------------------------------------------------------------------

    def take_config(self, worker: Worker) -> None:
        """Put the settings a reload left for this worker in force (it has no process now)."""
        config = worker.pending_config
        if config is None or worker.proc is not None:
            return
        if worker.take_config(config):
            self._release_health(worker)  # bound again, with the new settings, at the spawn
        logger.info("%s: new settings in force", worker.name)

    def spawn(self, worker: Worker, now: float) -> None:
        """Start the worker's process now; a spawn that fails is a ``crashed`` exit with status 127.

        Settings a reload left for the worker (``pending_config``) are taken on first.
        """
        self.take_config(worker)
        worker.set_state(S.STARTING)
        worker.next_start_at = None
        wall = self._wall()
        try:
            self._open_health(worker)
            pid = worker.spawn(now, wall)
            # First sample one regular period in: a ProcessManager inside the worker (sampling every
            # 0.25 s) decides its own limits first and writes its own last line, as in production.
            worker.next_sample_at = now + self.settings.sample_interval_s
        except (OSError, UsageError) as error:
            why = str(error) if isinstance(error, UsageError) else error.strerror or str(error)
            logger.error("%s: cannot start: %s", worker.name, why)
            outcome = StopOutcome(StopReason.CRASHED, f"cannot start: {why}", exit_status=127)
            self._account(worker, outcome, pid=None, wall=wall, runtime_s=0.0, peak=None)
            self._after_exit(worker, outcome, 0.0, now)
            return
        self._on_spawned(worker)
        self._watchdog.watch(pid)
        self._on_changed()
        self.history.record(Event(self.project, worker.name, wall, "start", pid=pid))
        logger.info("%s: started (pid %s)", worker.name, pid)
        self.notify_waiters(worker)

    # -- exits -----------------------------------------------------------------------

    def exited(self, worker: Worker, wait_status: int) -> None:
        """The worker's process was reaped with ``wait_status``: one outcome, rendered everywhere."""
        now, wall = self._clock(), self._wall()
        pid = worker.pid
        asked = worker.asked
        returncode, runtime = worker.exited(wait_status, now)
        reported = worker.link.outcome if worker.link is not None else None
        outcome = outcome_of_exit(
            returncode,
            asked=asked,
            reported=reported,
            forced=worker.killed_after_grace,
            grace_s=worker.config.limits.grace_s,
            sent=worker.signalled,
        )
        # The figure that tripped a memory limit is a peak the samples may have missed.
        tripped = int(outcome.figures.get("memory_bytes", 0))
        worker.peak_memory_bytes = max(worker.peak_memory_bytes, tripped)  # status shows what history does
        peak = worker.peak_memory_bytes or None
        worker.forget_process()
        if pid is not None:
            # Members of its group may remain (children it did not stop): stop them too.
            self._leftovers.add(pid, now)
        self._account(worker, outcome, pid=pid, wall=wall, runtime_s=runtime, peak=peak)
        self._on_changed()
        if worker.held_by_operator:
            self._stopped_on_request(worker, now)
        else:
            self._after_exit(worker, outcome, runtime, now)

    def _account(
        self,
        worker: Worker,
        outcome: StopOutcome,
        *,
        pid: int | None,
        wall: float,
        runtime_s: float,
        peak: int | None,
    ) -> None:
        """Render one stop outcome on every surface: counter, last_exit, log note, history, log line."""
        worker.stops_total[outcome.reason.value] += 1
        worker.last_outcome = outcome
        worker.last_exit = last_exit_json(outcome, wall=wall, runtime_s=runtime_s)
        worker.output.note(f"stopped: {outcome.summary()} after {runtime_s:.1f}s")
        self.history.record(
            Event(
                self.project,
                worker.name,
                wall,
                "stop",
                pid=pid,
                reason=outcome.reason.value,
                exit_status=outcome.status_code,
                runtime_seconds=round(runtime_s, 3),
                peak_memory_bytes=peak,
                detail=outcome.detail,
                by=outcome.by.value,
            )
        )
        level = logging.INFO if outcome.expected else logging.WARNING
        logger.log(
            level, "%s: pid %s stopped: %s after %.1fs", worker.name, pid, outcome.summary(), runtime_s
        )

    def _stopped_on_request(self, worker: Worker, now: float) -> None:
        worker.set_state(S.STOPPED)
        if worker.restart_after_stop and not self.exiting:
            worker.restart_after_stop = False
            worker.restarts += 1
            if not self.may_spawn(worker):
                worker.want_start = True  # the loop starts it once the port is free; its waiters wait
                return
            self.spawn(worker, now)
            return
        worker.restart_after_stop = False
        self.notify_waiters(worker)

    def _after_exit(self, worker: Worker, outcome: StopOutcome, runtime_s: float, now: float) -> None:
        if self.exiting:
            worker.set_state(S.STOPPED)
            self.notify_waiters(worker)
            return
        decision, worker.record = decide(worker.policy, worker.record, outcome, runtime_s, now)
        if decision.action is Action.FATAL:
            logger.error(
                "%s: %s; %d failed starts within %.0fs, giving up (FATAL until 'procguard start %s')",
                worker.name,
                outcome.reason,
                len(worker.record.failure_times),
                worker.policy.start_limit_interval_s,
                worker.name,
            )
            worker.output.note("start limit reached: FATAL")
            worker.set_state(S.FATAL)
            self.notify_waiters(worker)
        elif decision.action is Action.STOP:
            logger.info(
                "%s: %s; restart policy %s leaves it stopped",
                worker.name,
                outcome.reason,
                worker.policy.restart,
            )
            worker.set_state(S.STOPPED)
            self.notify_waiters(worker)
        elif decision.delay_s <= 0:
            logger.info("%s: restarting now", worker.name)
            worker.restarts += 1
            self.spawn(worker, now)
        else:
            logger.warning("%s: restarting in %.1fs", worker.name, decision.delay_s)
            worker.restarts += 1
            worker.set_state(S.BACKOFF)
            worker.next_start_at = now + decision.delay_s
            self.notify_waiters(worker)

    # -- signals an operator sends -------------------------------------------------------

    def send_signal(self, worker: Worker, signum: int) -> None:
        """``procguard signal``: ``signum`` to the worker's main process, with what it means said first.

        Should the signal end the process, its outcome is the operator's
        (``signal`` for SIGTERM/SIGINT, ``killed`` for any other), not a
        signal "from outside procguard"; a worker with a link reads the same
        in its stop note, so its own last line agrees.
        """
        name = signal_name(signum)
        reason = StopReason.SIGNAL if signum in STOP_SIGNUMS else StopReason.KILLED
        worker.signalled = StopOutcome(reason, f"{name} sent with 'procguard signal'", signal=signum,
                                       by=Ender.OPERATOR)
        if worker.link is not None and signum in STOP_SIGNUMS:
            worker.link.send_stop_note(worker.signalled)
        worker.signal(signum, group=False)
        logger.info("%s: %s sent to pid %s (procguard signal)", worker.name, name, worker.pid)

    # -- stopping ----------------------------------------------------------------------

    def request_stop(self, worker: Worker, now: float, why: StopOutcome) -> None:
        """Ask ``worker`` to stop for ``why``: a note on its link, SIGTERM now, SIGKILL to its group
        after drain + grace.

        ``why`` is an operator's stop (:func:`operator_stop`) or a stop the
        supervisor decided itself (a limit, a failed probe). An operator's stop
        overrides a recycle in progress: the worker is not restarted after it.
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
        if why.by is Ender.OPERATOR:
            worker.held_by_operator = True  # whatever ends it now, it stays stopped (or restarts if asked)
        if worker.state is S.STOPPING:
            return  # a stop is under way already: it ends as it ends
        worker.set_state(S.STOPPING)
        worker.asked = why
        # The worker drains first (still working, not ready), then has its grace;
        # a runner needs a moment more to stop its own child before it exits.
        budget = worker.config.limits.stop_budget_s
        worker.stop_deadline = now + budget + (RUNNER_EXIT_MARGIN_S if worker.via_runner else 0.0)
        logger.info("%s: stopping (pid %s): %s (%s)", worker.name, worker.pid, why.reason, why.detail)
        if worker.link is not None:
            worker.link.send_stop_note(why)  # before the signal: the worker reads why when it comes
        drain = worker.config.limits.drain_delay_s
        if drain > 0 and why.by is Ender.OPERATOR and worker.supervisor_serves_health:
            # Its /ready (served here) reads 503 from now on while it keeps working, as a runner's
            # drain does; a limit or a failed probe stops it at once, as a runner's own verdicts do.
            worker.term_at = now + drain
            logger.info("%s: not ready, draining for %gs before %s", worker.name, drain,
                        signal_name(worker.stop_signum))
            return
        worker.signal(worker.stop_signum, group=worker.group_signals)

    def worker_reported(self, worker: Worker, now: float) -> None:
        """What the worker said on its link: a stop it decided itself makes it STOPPING now.

        The supervisor then decides nothing more for that process (no second
        stop for the same limit it may see a moment later); it only watches the
        stop budget and the hard ceiling, as for a stop it asked for.
        """
        link = worker.link
        if link is None or link.stopping is None or worker.state not in (S.STARTING, S.RUNNING):
            return
        worker.set_state(S.STOPPING)
        budget = worker.config.limits.stop_budget_s
        worker.stop_deadline = now + budget + (RUNNER_EXIT_MARGIN_S if worker.via_runner else 0.0)
        decided = link.stopping
        logger.info(
            "%s: stopping on its own (pid %s): %s (%s)",
            worker.name,
            worker.pid,
            decided.reason,
            decided.detail,
        )

    def _kill_now(self, worker: Worker, now: float, why: StopOutcome) -> None:
        """The hard ceiling: SIGKILL the worker's group at once, no note, no grace (even mid-stop)."""
        logger.warning("%s: %s: killing its group (pid %s) at once", worker.name, why.detail, worker.pid)
        if worker.state is not S.STOPPING:
            worker.set_state(S.STOPPING)
        worker.stop_deadline = None
        worker.term_at = None
        worker.want_start = False
        worker.asked = why
        worker.hard_killed = True
        worker.signal(signal.SIGKILL, group=True)

    # -- what the loop observes ------------------------------------------------------------

    def sample(self, worker: Worker, now: float, wall: float, *, regular: bool = True) -> None:
        """Read the worker's tree; recycle a directly run command at its memory/CPU/runtime limit.

        ``regular`` is False for the extra samples of a closely watched worker
        (they stay out of the chart); after each sample ``worker.next_sample_at``
        says when it is due again (:func:`procguard.policy.next_sample_delay`:
        the regular pace, closing in on the limit while it grows towards it,
        fast while its strikes are counted, less often at rest; never after its
        max runtime). A
        limit verdict is a graceful recycle (SIGTERM, then grace); the hard
        ceiling kills, even during a stop already under way.
        """
        if not worker.state.has_process or worker.sampler is None:
            worker.next_sample_at = None
            return
        sampler = worker.sampler
        sample = sampler.sample()
        if sample is None:
            worker.next_sample_at = None
            return
        worker.observe(sample, now, wall, chart=regular)
        tracker = worker.tracker
        if tracker is None:  # a runner watches this one closely itself: sampled for its figures
            worker.next_sample_at = now + self.settings.sample_interval_s
            return
        limits = worker.config.limits
        if worker.state is S.STOPPING:
            hard = limits.memory_ceiling_bytes
            if hard and sample.memory_bytes > hard and not worker.hard_killed:
                detail = (
                    f"memory {sample.memory_bytes / _MB:.1f} MB over the hard ceiling {hard / _MB:.1f} MB"
                )
                figures = {"memory_bytes": sample.memory_bytes, "memory_hard_limit_bytes": hard}
                why = StopOutcome.decided(
                    StopReason.HARD_MEMORY_LIMIT, detail, by=Ender.PROCGUARD, figures=figures
                )
                self._kill_now(worker, now, why)
            worker.next_sample_at = now + self.settings.fast_sample_interval_s
            return
        verdict = tracker.observe(LimitSample(sample), now)
        delay = next_sample_delay(
            sample.memory_bytes,
            limits=limits,
            strikes=tracker.memory_strikes,
            previous=sampler.growth_from,
            now=sampler.taken_at or now,
            regular_s=self.settings.sample_interval_s,
            rest_s=self.settings.rest_sample_interval_s,
        )
        recycle_at = worker.recycle_at  # max_runtime less this process's jitter
        if recycle_at is not None:
            delay = min(delay, max(0.0, recycle_at - now))  # the recycle comes on time
        worker.next_sample_at = now + delay
        if verdict is not None:
            why = StopOutcome.decided(
                verdict.reason, verdict.detail, by=Ender.PROCGUARD, figures=verdict.figures
            )
            if verdict.hard:
                self._kill_now(worker, now, why)
            else:
                self.request_stop(worker, now, why)
            return
        if recycle_at is not None and worker.started_at is not None and now >= recycle_at:
            self.request_stop(
                worker,
                now,
                StopOutcome.decided(
                    StopReason.MAX_RUNTIME,
                    runtime_detail(now, worker.started_at, recycle_at, limits.max_runtime_s),
                    by=Ender.PROCGUARD,
                ),
            )

    def probe_result(self, worker: Worker, result: ProbeResult, now: float) -> None:
        """Count a failed liveness probe; stop the worker (a failure) after the threshold in a row."""
        if worker.generation != result.generation or worker.state not in (S.STARTING, S.RUNNING):
            return  # about a process that has gone since
        if result.ok:
            worker.probe_failures = 0
            return
        worker.probe_failures += 1
        threshold = self.settings.probe_failure_threshold
        logger.warning(
            "%s: health probe failed (%d/%d): %s",
            worker.name,
            worker.probe_failures,
            threshold,
            result.detail,
        )
        if worker.probe_failures >= threshold and not self.exiting:
            why = StopOutcome.decided(
                StopReason.LIVENESS,
                f"{worker.probe_failures} health probes in a row failed: {result.detail}",
                by=Ender.PROCGUARD,
            )
            self.request_stop(worker, now, why)

    def notify_waiters(self, worker: Worker) -> None:
        """Answer the control clients waiting for this worker's transition."""
        waiters, worker.waiters = worker.waiters, []
        for waiter in waiters:
            waiter(worker)
