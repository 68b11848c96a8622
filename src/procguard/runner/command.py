"""Command mode: run a program as a child and hold it to the limits from outside.

``procguard run [flags] -- COMMAND ARGS...`` is for programs that know
nothing of procguard. The runner:

- starts the command in its own session, with the parent-death signal and
  the instance marker (:func:`procguard.instances.spawn.spawn_process`), and
  makes itself a child subreaper, so the command dies with the runner and
  grandchildren it orphans come back to the runner to be stopped;
- samples the command's whole process tree every ``sample_interval_s``
  (1 s), faster while it is near its memory limit or growing towards it and
  faster still while its memory strikes are counted
  (:func:`procguard.policy.next_sample_delay`), so an idle command costs
  little to watch and a leak is still stopped gracefully
  (:mod:`procguard.runner.tree`, straight from /proc), and applies the same rules
  as the in-process manager (:mod:`procguard.policy`, the same
  :class:`~procguard.limits.WorkerLimits`): memory over the limit for
  ``memory_strikes`` consecutive samples or CPU over the limit averaged over
  a full window -> SIGTERM, then SIGKILL to the whole tree after
  ``--grace``; memory over the hard ceiling (1.25 x the limit) -> SIGKILL
  at once; ``--max-runtime`` reached -> SIGTERM, then SIGKILL after grace;
- on the first SIGTERM/SIGINT it turns not-ready (/ready 503) at once,
  keeps the command working for ``--drain-delay``, then forwards the signal
  to the command (the command's main process; it decides how to stop its
  own children) and gives it ``--grace`` to end; a second signal (during
  the drain too), or a stop that overruns grace, kills the tree;
- serves /health, /ready and /metrics for the command (healthy = running
  and within its limits), and stops whatever is left of the tree when the
  command ends;
- speaks the systemd notify protocol when ``NOTIFY_SOCKET`` is set (a
  ``Type=notify`` unit): ``READY=1`` once the command is started,
  ``WATCHDOG=1`` while it is alive and healthy (running, within its limits,
  not stopping), ``STOPPING=1`` and a ``STATUS=`` line when a stop begins.
  The runner is the unit's main process (``NotifyAccess=main``), so the
  command gets no ``NOTIFY_SOCKET``/``WATCHDOG_*`` of its own: a program
  that speaks sd_notify itself would otherwise send messages systemd
  rejects.

How the command ended is one :class:`~procguard.outcome.StopOutcome`
(:func:`procguard.outcome.outcome_of_exit` over what the runner asked and
how the command exited), logged, reported to a supervising ``procguard up``
through the link, and turned into the runner's exit status: the command's
own (128 + N when it died of signal N), except when the runner stopped it for
a reason with a status of its own in :mod:`procguard.reasons` (80 max
runtime, 82 memory, 83 CPU; 86 hard memory ceiling; 87 when grace ran out or
a second signal forced the stop).
"""

from __future__ import annotations

import os
import select
import signal
import time

from ..deferred_log import get_logger
from ..errors import UsageError
from ..heap import release_memory
from ..instances.childproc import ChildHandle, reap_children, tree_pids
from ..instances.watchdog import tell
from ..outcome import StopOutcome, outcome_of_exit
from ..parent_link import stop_for_signal
from ..policy import LimitTracker, next_sample_delay, runtime_deadline, runtime_detail
from ..reasons import REASONS, Ender, ExitStatus, StopReason, signal_name
from ..signals import SignalCapture
from .tree import TreeReading, TreeSampler, kill_tree, stop_pids

# The watching stage of a standalone runner imports only what watching needs
# (:mod:`procguard.runner.handoff`): HTTP, snapshots, spawning and locks load
# where they are used, never at the top.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    from collections.abc import Callable, Collection

    from ..health.notify import SystemdNotifier
    from ..health.server import HealthServer
    from ..instances.lock import InstanceLock
    from ..parent_link import ParentLink
    from ..policy import LimitVerdict
    from ..snapshot import HealthStatus, WorkerSnapshot
    from .options import RunOptions

log = get_logger(__name__)  # logging loads on the first message

#: How often the command's tree is sampled while it is well under its memory limit.
DEFAULT_SAMPLE_INTERVAL_S = 1.0
#: How often exited orphans adopted as subreaper are reaped (each pass reads our children list).
REAP_INTERVAL_S = 5.0
#: The systemd notify variables that belong to the runner (the unit's main process), not to the command.
NOTIFY_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def check_command(argv: tuple[str, ...] | list[str]) -> str:
    """The program's path; UsageError (one line) when it is not found or not executable.

    Checked before anything starts, so a typo never leaves a health server
    or a lock record behind for a moment.
    """
    program = argv[0]
    path = _which(program) if os.sep not in program else program
    if path is None or not os.path.exists(path):
        msg = f"command {program!r} not found (give a program on PATH or a path to one)"
        raise UsageError(msg)
    if os.path.isdir(path) or not os.access(path, os.X_OK):
        msg = f"command {program!r} is not an executable file"
        raise UsageError(msg)
    return path


def _which(program: str) -> str | None:
    """The first executable ``program`` on PATH, as a shell finds it (shutil.which without shutil)."""
    for folder in os.environ.get("PATH", os.defpath).split(os.pathsep):
        path = os.path.join(folder or os.curdir, program)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def _status_of(returncode: int) -> int:
    """A Popen return code as a shell would report it (128 + N for signal N)."""
    return returncode if returncode >= 0 else 128 - returncode


def runner_status(outcome: StopOutcome, returncode: int) -> int:
    """The runner's exit status: the reason's own status (80-87) if it has one, else the command's."""
    status = REASONS[outcome.reason].status
    if isinstance(status, int) and status >= ExitStatus.MAX_RUNTIME:
        return status
    return _status_of(returncode)


class CommandSupervisor:
    """Runs one command under the limits of ``options``; :meth:`run` returns the exit status.

    ``lock`` (the held instance lock, optional) gets the child's PID and the
    health port written into its record. ``marker`` is the
    ``PROCGUARD_INSTANCE`` value the command and its descendants carry.
    ``keep_pids`` are the runner's own helpers (the watchdog): never
    counted as leftovers of the command. ``watchdog_fd`` (a standalone
    runner's, :func:`procguard.instances.watchdog.start_watchdog`) is told
    the command's process group, so a SIGKILLed runner's command tree is
    stopped. ``notifier`` (from
    :meth:`SystemdNotifier.from_env`, None outside systemd) gets ``READY=1``,
    ``WATCHDOG=1`` and ``STOPPING=1``; the supervisor closes it when done.
    ``link`` (under ``procguard up``) hears the command's pid and the outcome,
    and says why a stop signal was sent.

    ``exec_to_watch`` (a standalone runner passes
    :func:`procguard.runner.handoff.exec_watching_stage`): once the command
    runs, it is called to execute the runner again (same PID) into its
    watching stage, which imports only what watching needs, so the process
    that lives as long as the command holds no parser, no lock code and no
    spawning code; it returns only when that did not happen. ``started`` (monotonic, wall clock) is when the
    command was started, for a runner resumed after that exec.
    """

    def __init__(
        self,
        options: RunOptions,
        *,
        marker: str,
        lock: InstanceLock | None = None,
        keep_pids: Collection[int] = (),
        sample_interval_s: float = DEFAULT_SAMPLE_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        notifier: SystemdNotifier | None = None,
        link: ParentLink | None = None,
        watchdog_fd: int | None = None,
        exec_to_watch: Callable[[CommandSupervisor, SignalCapture], None] | None = None,
        started: tuple[float, float] | None = None,
    ) -> None:
        self.options = options
        self.exec_to_watch = exec_to_watch
        self.limits = options.limits
        self.notifier = notifier
        self.link = link
        self.marker = marker
        self.watchdog_fd = watchdog_fd
        self.lock = lock
        self.keep_pids = frozenset(keep_pids)
        self.sample_interval_s = sample_interval_s
        self._clock = clock
        self.started_at, self.started_wall = started or (clock(), time.time())
        self.tracker = LimitTracker(self.limits, started_at=self.started_at)
        lim = self.limits
        self.deadline = runtime_deadline(self.started_at, lim.max_runtime_s, lim.runtime_jitter_s)
        self.health: HealthServer | None = None
        self.health_listener: socket.socket | None = None  # bound before the command starts
        self.child: ChildHandle | None = None
        # Written by the watch loop, read by the health thread (whole-object swaps).
        self._sample: TreeReading | None = None
        self._asked: StopOutcome | None = None  # the stop the runner decided, once
        self._stop_asked_at: float | None = None  # when the command got its stop signal (grace from here)
        self._forced = False
        self._running = False
        # A first signal during a drain: (signal to forward, when).
        self._forward_signum: int | None = None
        self._forward_at: float | None = None
        self._stopping_sent = False

    # -- health ----------------------------------------------------------------

    def snapshot(self) -> WorkerSnapshot:
        """What /health, /ready and /metrics show: the command's tree as last sampled."""
        from ..snapshot import HealthStatus, WorkerSnapshot, metric_labels

        now = self._clock()
        sample = self._sample
        child = self.child
        asked = self._asked
        health = self._health(now, sample)
        ready = (
            HealthStatus(True, "ready")
            if self._running and asked is None
            else HealthStatus(False, health.reason if not health.is_healthy else "not ready")
        )
        remaining = None if self.deadline is None else max(0.0, self.deadline - now)
        worker, stack = metric_labels(self.options.name)
        lim = self.limits
        return WorkerSnapshot(
            name=worker,
            stack=stack,
            pid=child.pid if child else os.getpid(),
            health=health,
            ready=ready,
            started=self._running,
            stopping=asked is not None,
            start_time_seconds=self.started_wall,
            uptime_seconds=now - self.started_at,
            cpu_percent=sample.cpu_percent if sample else 0.0,
            memory_bytes=sample.memory_bytes if sample else 0,
            memory_percent=sample.memory_percent if sample else 0.0,
            num_threads=sample.num_threads if sample else 0,
            num_children=sample.num_children if sample else 0,
            max_runtime_seconds=lim.max_runtime_s,
            remaining_seconds=remaining,
            memory_limit_bytes=lim.memory_limit_bytes,
            cpu_limit_percent=lim.cpu_limit_percent,
            stop_reason=asked.reason.value if asked is not None else None,
        )

    def _health(self, now: float, sample: TreeReading | None) -> HealthStatus:
        """Healthy = running, not stopping, and the last sample within the limits."""
        from ..snapshot import HEALTHY, HealthStatus  # only with a port or under systemd

        if not self._running:
            return HealthStatus(False, "not running" if self.child else "starting")
        asked = self._asked
        if asked is not None:
            return HealthStatus(False, f"stopping: {asked.reason}")
        if sample is not None and self.tracker.over_soft_memory(sample):
            return HealthStatus(False, f"memory_limit: {sample.memory_bytes / 2**20:.1f} MB over the limit")
        if sample is not None and self.tracker.over_cpu(sample, now):
            return HealthStatus(False, f"cpu_limit: {sample.cpu_percent:.1f}% over the limit")
        return HealthStatus(True, HEALTHY)

    # -- systemd notify ----------------------------------------------------------

    def _notify_ready(self, child: ChildHandle) -> None:
        if self.notifier is not None:
            self.notifier.ready(f"running pid {child.pid}: {' '.join(self.options.command)}")

    def _feed_watchdog(self, now: float) -> None:
        """WATCHDOG=1 (rate-limited by the notifier) while the command is alive and healthy.

        A hung runner, or a command held unhealthy, stops feeding it, and
        systemd restarts the unit after ``WatchdogSec``. A stop sends
        STOPPING=1 first, which disarms systemd's watchdog for the stop.
        """
        if self.notifier is not None and self._health(now, self._sample).is_healthy:
            self.notifier.watchdog()

    def _notify_stopping(self, text: str) -> None:
        if not self._stopping_sent:
            self._stopping_sent = True
            if self.notifier is not None:
                self.notifier.stopping(text)
            if self.link is not None and self._asked is not None:
                self.link.report_stopping(self._asked)

    # -- running ---------------------------------------------------------------

    def run(self) -> int:
        """Start the command, watch it until it ends, clean up; return the exit status."""
        outcome = self.run_for_outcome()
        assert outcome.exit_status is not None
        return outcome.exit_status

    def run_for_outcome(self) -> StopOutcome:
        """Start the command, watch it, clean up; how it ended, with the runner's exit status.

        With ``exec_to_watch`` this returns only when the exec into the
        watching stage did not happen (a stop signal came first, or the
        interpreter could not be executed): the same process then watches.
        """
        from ..instances.spawn import become_child_subreaper

        capture = SignalCapture.take_early() or SignalCapture()
        capture.install()
        become_child_subreaper()  # kept across the exec into the watching stage
        try:
            self._start()
            if self.exec_to_watch is not None:
                self.exec_to_watch(self, capture)
                if self.health_listener is not None:  # no exec after all: this process serves the port
                    self._serve_health(self.health_listener)
            return self._watch_to_end(capture)
        finally:
            self._running = False
            self._cleanup(capture)

    def resume(self, child: ChildHandle, listener: socket.socket | None) -> StopOutcome:
        """The watching stage after the exec: serve health on ``listener``, watch ``child`` to its end."""
        capture = SignalCapture.take_early() or SignalCapture()
        capture.install()
        self.child = child
        self._running = True
        try:
            if listener is not None:
                self._serve_health(listener)
            return self._watch_to_end(capture)
        finally:
            self._running = False
            self._cleanup(capture)

    def _start(self) -> None:
        """Check the command, bind the health port, start the command and tell everyone who watches it."""
        check_command(self.options.command)
        lim = self.limits
        listener = None
        if lim.health_port and (lim.health_tls_cert or lim.health_token_file):
            from ..health.tls import check_files  # a bad file is exit 2 before the command starts

            check_files(lim.health_tls_cert, lim.health_tls_key, lim.health_token_file)
        if lim.health_port:
            from ..health.listen import bind_listener  # only with a port: no HTTP code otherwise

            # A port taken is exit 2 before anything started.
            listener = bind_listener(lim.health_host, lim.health_port)
            self.health_listener = listener
            if self.exec_to_watch is None:
                self._serve_health(listener)
        self.child = self._spawn()
        self._running = True
        if self.watchdog_fd is not None:
            tell(self.watchdog_fd, f"+{self.child.pid}")  # it leads its own session and group
        if self.link is not None:
            self.link.report_worker_pid(self.child.pid)
        self._notify_ready(self.child)
        port = listener.getsockname()[1] if listener is not None else None
        where = ""
        if port is not None:
            from ..health.listen import listener_url

            where = f"; health on {listener_url(lim.health_host, port)}"
        log.info("%s: started %r as pid %s%s", self.options.name, " ".join(self.options.command),
                 self.child.pid, where)
        if self.lock is not None:
            self.lock.update(
                {"child_pid": self.child.pid, "command": list(self.options.command)},
                health_port=port, marker=self.marker,
            )

    def _serve_health(self, listener: socket.socket) -> None:
        from ..health.endpoints import worker_token
        from ..health.server import serve_health

        # The runner's own thread never runs user code, so it answers
        # probes promptly from a thread: no responder process needed.
        lim = self.limits
        self.health = serve_health(
            self.snapshot, host=lim.health_host, mode="thread", listener=listener,
            token=worker_token(lim.health_token_file, os.environ) or None,
            tls_cert=lim.health_tls_cert, tls_key=lim.health_tls_key,
        )

    def _watch_to_end(self, capture: SignalCapture) -> StopOutcome:
        assert self.child is not None
        release_memory()  # start-up is over: the runner lives at this size for as long as the command
        returncode = self._watch(self.child, capture)
        self._running = False
        return self._result(returncode)

    def _spawn(self) -> ChildHandle:
        from ..instances.spawn import spawn_process

        argv = list(self.options.command)
        try:
            env = {key: value for key, value in os.environ.items() if key not in NOTIFY_ENV}
            proc = spawn_process(argv, marker=self.marker, env=env)
        except FileNotFoundError:
            msg = f"command {argv[0]!r} not found (give a program on PATH or a path to one)"
            raise UsageError(msg) from None
        except PermissionError:
            msg = f"command {argv[0]!r} is not executable"
            raise UsageError(msg) from None
        return ChildHandle.of(proc)

    def _sampler(self, pid: int) -> TreeSampler:
        return TreeSampler(pid, cpu_window_s=self.limits.cpu_window_s, clock=self._clock)

    def _watch(self, child: ChildHandle, capture: SignalCapture) -> int:
        """The watch loop: returns the command's return code once it has exited."""
        sampler = self._sampler(child.pid)
        next_sample = self._clock()
        signals_seen = 0
        next_reap = self._clock() + REAP_INTERVAL_S
        pidfd = child.fileno()
        grace = self.limits.grace_s
        while True:
            now = self._clock()
            wake_at = [next_sample]
            if self.deadline is not None and self._asked is None:
                wake_at.append(self.deadline)
            if self._stop_asked_at is not None and not self._forced:
                wake_at.append(self._stop_asked_at + grace)
            if self._forward_at is not None:
                wake_at.append(self._forward_at)
            timeout = max(0.0, min(wake_at) - now)
            if pidfd is None:
                timeout = min(timeout, 0.05)
            fds = [capture.wakeup_fd] + ([pidfd] if pidfd is not None else [])
            try:
                select.select(fds, [], [], timeout)
            except InterruptedError:  # pragma: no cover - PEP 475 retries select
                pass
            if not child.is_alive():
                break
            now = self._clock()
            if capture.count > signals_seen:
                capture.drain()
                count = capture.count
                if signals_seen == 0:
                    self._on_signal(child, capture.first_signum or signal.SIGTERM, first=True)
                if count >= 2:  # a second signal, even one that came with the first
                    self._on_signal(child, capture.last_signum or signal.SIGTERM, first=False)
                signals_seen = count
            if self._forward_at is not None and now >= self._forward_at and not self._forced:
                self._forward(child)
            if self.deadline is not None and self._asked is None and now >= self.deadline:
                self._begin_stop(
                    child,
                    StopOutcome.decided(
                        StopReason.MAX_RUNTIME,
                        runtime_detail(now, self.started_at, self.deadline, self.limits.max_runtime_s),
                        by=Ender.PROCGUARD,
                    ),
                )
            if now >= next_sample:
                sample = sampler.sample()
                if sample is None:
                    continue  # exiting: the next turn sees it
                previous = self._sample
                self._sample = sample
                verdict = self.tracker.observe(sample, now)
                next_sample = now + next_sample_delay(
                    sample.memory_bytes,
                    limits=self.limits,
                    strikes=self.tracker.memory_strikes,
                    previous=None if previous is None else (previous.taken_at, previous.memory_bytes),
                    now=sample.taken_at,
                    regular_s=self.sample_interval_s,
                )
                if verdict is not None and not self._forced:
                    self._on_verdict(child, verdict)
                self._feed_watchdog(now)
            if self._stop_asked_at is not None and not self._forced and now - self._stop_asked_at >= grace:
                log.warning(
                    "%s: pid %s did not stop within the grace of %gs; killing its process tree",
                    self.options.name, child.pid, grace,
                )
                self._kill_tree(child)
            if now >= next_reap:  # zombies of adopted orphans: harmless for a moment, costly to scan for
                next_reap = now + REAP_INTERVAL_S
                reap_children(exclude=self._own_children(child))
        returncode = child.wait()
        return returncode if returncode is not None else -signal.SIGKILL

    def _own_children(self, child: ChildHandle) -> list[int]:
        pids = [child.pid, *self.keep_pids]
        if self.health is not None and self.health.responder_pid:
            pids.append(self.health.responder_pid)
        return pids

    def _on_signal(self, child: ChildHandle, signum: int, *, first: bool) -> None:
        name = signal_name(signum)
        if first and self._asked is None:
            self._asked = stop_for_signal(signum, self.link)
            drain = self.limits.drain_delay_s
            draining = f"; draining for {drain:g}s" if drain > 0 else ""
            self._notify_stopping(f"stopping: {self._asked.reason} ({self._asked.detail}){draining}")
            self._forward_signum = signum
            if drain > 0:
                # Not ready from now on (/ready 503), still working: load balancers stop sending first.
                log.info("%s: got %s; not ready, draining for %gs before forwarding it to pid %s",
                         self.options.name, name, drain, child.pid)
                self._forward_at = self._clock() + drain
                return
            self._forward(child)
            return
        if first and not self._forced:
            # Already stopping gracefully for a limit: let that stop finish within its grace.
            log.info("%s: got %s while already stopping (%s); a second signal stops it at once",
                     self.options.name, name, self._asked.reason if self._asked else "?")
            return
        log.warning("%s: got %s while stopping; killing the process tree of pid %s now",
                    self.options.name, name, child.pid)
        self._kill_tree(child)

    def _forward(self, child: ChildHandle) -> None:
        """Forward the first stop signal to the command; its grace starts now (after any drain).

        With a ``stop_signal`` other than TERM the command gets that signal, whatever stop
        signal reached the runner; with TERM, the one that came (a Ctrl-C stays a SIGINT).
        """
        signum = self._forward_signum or signal.SIGTERM
        if self.limits.stop_signal != signal.SIGTERM:
            signum = self.limits.stop_signal
        self._forward_at = None
        self._stop_asked_at = self._clock()
        log.info("%s: forwarding %s to pid %s (grace %gs)", self.options.name, signal_name(signum),
                 child.pid, self.limits.grace_s)
        child.send_signal(signum)

    def _on_verdict(self, child: ChildHandle, verdict: LimitVerdict) -> None:
        decided = StopOutcome.decided(
            verdict.reason, verdict.detail, by=Ender.PROCGUARD, figures=verdict.figures
        )
        if verdict.hard:
            self._asked = decided  # overrides a graceful stop under way: the ceiling wins
            self._stop_asked_at = self._stop_asked_at or self._clock()
            self._forward_at = None
            self._notify_stopping(f"stopping: {verdict.reason} ({verdict.detail})")
            log.warning("%s: %s: %s; killing the process tree of pid %s at once",
                        self.options.name, verdict.reason, verdict.detail, child.pid)
            self._kill_tree(child)
        elif self._asked is None:
            self._begin_stop(child, decided)

    def _begin_stop(self, child: ChildHandle, decided: StopOutcome) -> None:
        self._asked = decided
        self._stop_asked_at = self._clock()
        self._notify_stopping(f"stopping: {decided.reason} ({decided.detail})")
        signum = self.limits.stop_signal
        log.warning("%s: %s: %s; sending %s to pid %s (grace %gs)", self.options.name, decided.reason,
                    decided.detail, signal_name(signum), child.pid, self.limits.grace_s)
        child.send_signal(signum)

    def _kill_tree(self, child: ChildHandle) -> None:
        self._forced = True
        self._forward_at = None
        kill_tree(child.pid)  # through pidfds opened after a start-time check: never a recycled PID

    def _result(self, returncode: int) -> StopOutcome:
        """How the command ended, with the runner's exit status in it; logged and reported."""
        outcome = outcome_of_exit(
            returncode, asked=self._asked, forced=self._forced, grace_s=self.limits.grace_s
        )
        how = f"exited with status {_status_of(returncode)}" if returncode >= 0 else (
            f"was killed by {signal_name(-returncode)}"
        )
        pid = self.child.pid if self.child else "?"
        status = runner_status(outcome, returncode)
        final = outcome.with_changes(
            detail=f"{outcome.detail}; pid {pid} {how}" if outcome.detail else f"pid {pid} {how}",
            exit_status=status, signal=None,
        )
        (log.info if outcome.expected else log.warning)("%s: stopped: %s", self.options.name, final.summary())
        self._notify_stopping(f"stopped: {final.summary()}")
        if self.link is not None:
            self.link.report_outcome(final)
        return final

    def _cleanup(self, capture: SignalCapture) -> None:
        """Close health, stop what is left of the tree (orphans adopted by us included), restore signals."""
        if self.health is not None:
            self.health.close()
        child = self.child
        # Our descendants (orphans adopted as subreaper included), our own helpers' subtrees left out.
        leftovers = tree_pids(os.getpid(), excluded=self.keep_pids)[1:]
        if child is not None:
            leftovers = [pid for pid in leftovers if pid != child.pid]
            if child.is_alive():  # only on an error inside the loop
                leftovers = [child.pid, *leftovers]
        if leftovers:
            log.info("%s: stopping %d leftover process(es) of the command: %s", self.options.name,
                     len(leftovers), ", ".join(str(pid) for pid in leftovers))
            stop_pids(leftovers, self.limits.grace_s)
        if child is not None:
            child.wait(timeout=5)  # SIGKILLed above when it was still running
            child.close()
            if self.watchdog_fd is not None:
                tell(self.watchdog_fd, f"-{child.pid}")  # gone: its number may be reused
        reap_children()
        capture.close()
        if self.notifier is not None:
            self.notifier.close()
