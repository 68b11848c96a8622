"""The event loop of ``procguard up``: spawn, reap, restart, stop, report.

One thread does all the deciding (honcho's manager is the model: one loop
over events), so no worker state is ever shared between threads:

- a ``selectors`` loop waits on the workers' output pipes, the control
  socket and a wake-up pipe that signal handlers (``signal.set_wakeup_fd``)
  and the health prober thread write to;
- SIGCHLD only wakes the loop; the loop reaps with ``waitpid(-1, WNOHANG)``
  (it is a child subreaper, so orphaned grandchildren are reaped too);
- timers (backoff, stop deadlines, start period, sampling) are computed
  from the workers' fields at each turn, with :func:`time.monotonic`.

The status page and ``/metrics`` run in a server thread that reads the
immutable view this loop publishes after each change (:meth:`Supervisor.view`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import queue
import selectors
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from ..config import StackConfig, start_order
from ..errors import UsageError
from ..instances.spawn import become_child_subreaper
from ..snapshot import HealthStatus, WorkerSnapshot
from .backoff import Action, Exit, Record, decide
from .control import ControlServer, Peer, socket_path
from .history import Event, History, db_path
from .logs import RotatingFile, WorkerOutput, log_dir, log_path
from .procscan import LimitSample
from .states import WorkerState
from .watchdog import start_watchdog
from .worker import Worker, default_procguard

if TYPE_CHECKING:
    from .statuspage import StatusServer

logger = logging.getLogger(__name__)

#: Extra time a worker run through `procguard run` gets to stop its own child after grace.
_RUNNER_EXIT_MARGIN_S = 1.0

S = WorkerState


TUNING_ENV = "PROCGUARD_SUPERVISOR_TUNING"

#: The status page's view is refreshed at most this often (and after each sample).
PUBLISH_INTERVAL_S = 0.25


@dataclass(frozen=True)
class Settings:
    """Knobs of the supervisor itself (not of a worker); tests shorten them."""

    start_period_s: float = 1.0  # alive this long after spawn -> RUNNING
    sample_interval_s: float = 2.0  # memory/CPU sampling of every worker
    probe_delay_s: float = 10.0  # first health probe this long after spawn
    probe_period_s: float = 5.0
    probe_timeout_s: float = 2.0
    probe_failure_threshold: int = 3  # consecutive failures -> restart
    orphan_grace_s: float = 2.0  # leftover group members: TERM, then KILL after this
    watchdog: bool = True

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Defaults, overridden by ``PROCGUARD_SUPERVISOR_TUNING="sample_interval_s=0.5,..."``.

        Meant for tests and benchmarks (shorter periods); a bad entry is a UsageError.
        """
        text = (os.environ if environ is None else environ).get(TUNING_ENV, "").strip()
        if not text:
            return cls()
        values: dict[str, Any] = {}
        known = {f.name: f.type for f in fields(cls)}
        for item in text.split(","):
            key, _, value = item.partition("=")
            key = key.strip()
            if key not in known:
                msg = f"{TUNING_ENV}: unknown setting {key!r} (use one of: {', '.join(known)})"
                raise UsageError(msg)
            try:
                values[key] = (
                    value.strip().lower() in ("1", "true", "yes")
                    if key == "watchdog"
                    else int(value)
                    if key == "probe_failure_threshold"
                    else float(value)
                )
            except ValueError:
                msg = f"{TUNING_ENV}: {key}={value!r} is not a number"
                raise UsageError(msg) from None
        return cls(**values)


@dataclass
class _Group:
    """A process group whose leader has exited but members may remain."""

    pgid: int
    kill_at: float


@dataclass
class View:
    """What the status server shows; replaced as a whole, never mutated."""

    project: str
    supervisor_pid: int
    workers: list[dict[str, Any]] = field(default_factory=list)
    snapshots: list[WorkerSnapshot] = field(default_factory=list)


class Supervisor:
    """Supervise the workers of one :class:`StackConfig` until told to stop.

    >>> sup = Supervisor(config, state_dir=Path("/run/user/1000/procguard"))  # doctest: +SKIP
    >>> sup.run(["api"])  # blocks; Ctrl-C or 'procguard down' ends it     # doctest: +SKIP

    The caller holds the stack's instance lock (``supervisor.PROJECT``) for
    as long as :meth:`run` runs; ``on_ready`` is called once every selected
    worker has been started (``procguard up --detach`` returns then).
    """

    def __init__(
        self,
        config: StackConfig,
        *,
        state_dir: Path,
        terminal: BinaryIO | None = None,
        settings: Settings | None = None,
        status_port: int | None = None,
        procguard: Sequence[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.project = config.project.name
        self.state_dir = state_dir
        self.settings = settings or Settings()
        self.status_port = config.project.status_port if status_port is None else status_port
        self.status_server: StatusServer | None = None
        self._clock = clock
        self._wall = wall_clock
        self._selector = selectors.DefaultSelector()
        self._exiting = False
        self._forced = False
        self._signals: list[int] = []
        self._down_peers: list[Peer] = []
        self._groups: dict[int, _Group] = {}
        self._probe_results: queue.SimpleQueue[tuple[str, int, bool, str]] = queue.SimpleQueue()
        self._probe_targets: dict[str, tuple[str, int, int, float]] = {}
        self._probe_stop = threading.Event()
        self._next_sample = 0.0
        self._next_publish = 0.0
        self._publish_pending = True
        self._ready_sent = False
        self._on_ready: Callable[[], None] | None = None
        self._view = View(project=self.project, supervisor_pid=os.getpid())
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
            os.set_inheritable(fd, False)
        log_dir(state_dir, self.project, create=True)
        base_dir = config.path.parent
        width = max(len(name) for name in config.workers)
        argv = list(procguard) if procguard is not None else default_procguard()
        self.workers: dict[str, Worker] = {}
        for name, worker_config in config.workers.items():
            log = RotatingFile(
                log_path(state_dir, self.project, name),
                max_bytes=config.project.log_max_bytes,
                backups=config.project.log_backups,
            )
            output = WorkerOutput(name, log, terminal=terminal, width=width, clock=wall_clock)
            self.workers[name] = Worker(
                worker_config, project=self.project, base_dir=base_dir, procguard=argv, output=output
            )
        self.history = History(db_path(state_dir))
        self.control: ControlServer | None = None

    # -- public ----------------------------------------------------------------

    def release_waiters(self) -> None:
        """Close the connections of ``procguard down`` clients: they return when this is called.

        Call it after :meth:`run` once the stack's lock is released (so a
        ``down`` immediately followed by ``up`` never finds the old lock).
        Exiting the process does the same.
        """
        peers, self._down_peers = self._down_peers, []
        for peer in peers:
            peer.close()

    def view(self) -> View:
        """The latest published state (safe to call from any thread)."""
        return self._view

    def run(self, names: Sequence[str] | None = None, *, on_ready: Callable[[], None] | None = None) -> int:
        """Start the selected workers (all by default) and supervise until stopped.

        Returns 0 after a requested stop (signal, ``down``), 1 if a stop had to
        be forced. Must run in the main thread (signal handlers).
        """
        selected = start_order(self.config, names)
        self._on_ready = on_ready
        become_child_subreaper()
        self._start_watchdog()
        previous = self._install_signals()
        prober: threading.Thread | None = None
        try:
            self._selector.register(self._wake_r, selectors.EVENT_READ, self._drain_wake)
            self.control = ControlServer(
                socket_path(self.state_dir, self.project), self._handle_request, self._selector
            )
            if self.status_port:
                self._start_status_server()
            if any(self.workers[name].config.health_port for name in self.workers):
                prober = threading.Thread(target=self._probe_loop, name="procguard-prober", daemon=True)
                prober.start()
            logger.info(
                "supervisor of %s started (pid %s, %d workers: %s)",
                self.project,
                os.getpid(),
                len(selected),
                ", ".join(selected),
            )
            for name in selected:
                self.workers[name].want_start = True
            self._loop()
        finally:
            self._probe_stop.set()
            self._shutdown_everything()
            self._restore_signals(previous)
            if prober is not None:
                self._wake()
                prober.join(timeout=self.settings.probe_timeout_s + 1)
        logger.info("supervisor of %s stopped", self.project)
        return 1 if self._forced else 0

    def _start_status_server(self) -> None:
        from .statuspage import StatusServer  # http.server costs MBs: only when asked for

        host = self.config.project.status_host
        try:
            self.status_server = StatusServer(self.view, host=host, port=self.status_port)
        except OSError as error:
            port = self.status_port
            msg = f"--status-port: cannot listen on {host}:{port} ({error.strerror}); use a free port"
            raise UsageError(msg) from None
        logger.info("status page on %s", self.status_server.url)

    # -- the loop --------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            now = self._clock()
            self._tick(now)
            if self._exiting and self._all_down():
                return
            timeout = self._next_timeout(self._clock())
            for key, _mask in self._selector.select(timeout):
                key.data()
                self._publish_pending = True
            self._handle_signals()
            self._reap()
            self._apply_probe_results()

    def _next_timeout(self, now: float) -> float:
        deadlines = [self._next_sample]
        if self._publish_pending:
            deadlines.append(self._next_publish)
        for worker in self.workers.values():
            if worker.state is S.BACKOFF and worker.next_start_at is not None:
                deadlines.append(worker.next_start_at)
            elif worker.state is S.STARTING and worker.started_at is not None:
                deadlines.append(worker.started_at + self.settings.start_period_s)
            elif worker.state is S.STOPPING and worker.stop_deadline is not None:
                deadlines.append(worker.stop_deadline)
        if self._groups:
            deadlines.append(now + 0.05)
        return max(0.0, min(deadlines) - now)

    def _tick(self, now: float) -> None:
        wall = self._wall()
        for worker in self.workers.values():
            state = worker.state
            if state is S.STARTING and worker.started_at is not None:
                if now - worker.started_at >= self.settings.start_period_s:
                    worker.set_state(S.RUNNING)
                    logger.info("%s: running (pid %s)", worker.name, worker.pid)
            elif state is S.BACKOFF and worker.next_start_at is not None and now >= worker.next_start_at:
                self._spawn(worker, now)
            elif state is S.STOPPING and worker.stop_deadline is not None and now >= worker.stop_deadline:
                logger.warning(
                    "%s: did not stop within %.1fs (drain + grace), killing its process group (pid %s)",
                    worker.name,
                    worker.config.grace_s + worker.config.drain_delay_s,
                    worker.pid,
                )
                worker.signal(signal.SIGKILL, group=True)
                worker.stop_deadline = None
        if self._exiting:
            self._stop_for_exit(now)
        else:
            for worker in self.workers.values():
                if worker.want_start and worker.state in (S.STOPPED, S.FATAL) and self._deps_ready(worker):
                    worker.want_start = False
                    self._spawn(worker, now)
        sampled = now >= self._next_sample
        if sampled:
            self._sample(now, wall)
            self._next_sample = now + self.settings.sample_interval_s
        self._sweep_groups(now)
        if sampled or (self._publish_pending and now >= self._next_publish):
            self._publish(now)
        if not self._ready_sent and not any(w.want_start for w in self.workers.values()):
            self._ready_sent = True
            if self._on_ready is not None:
                self._on_ready()
            release_memory()

    def _deps_ready(self, worker: Worker) -> bool:
        for dep_name in worker.config.depends_on:
            dep = self.workers[dep_name]
            if dep.state is S.RUNNING:
                continue
            if dep.state in (S.STOPPED, S.FATAL) and not dep.want_start:
                continue  # not coming: do not wait for it forever
            return False
        return True

    # -- spawning and exits ------------------------------------------------------

    def _spawn(self, worker: Worker, now: float) -> None:
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
            self.history.record(
                Event(
                    self.project,
                    worker.name,
                    wall,
                    "stop",
                    reason=exit_.reason,
                    exit_status=127,
                    runtime_seconds=0.0,
                )
            )
            self._after_exit(worker, exit_, now)
            return
        assert worker.output_fd is not None
        fd = worker.output_fd
        self._selector.register(fd, selectors.EVENT_READ, lambda: self._read_output(worker, fd))
        self._watch_group(pid)
        self._probe_targets_changed()
        self.history.record(Event(self.project, worker.name, wall, "start", pid=pid))
        logger.info("%s: started (pid %s)", worker.name, pid)
        self._notify_waiters(worker)

    def _read_output(self, worker: Worker, fd: int) -> None:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            worker.output.feed(data)
            return
        self._selector.unregister(fd)
        os.close(fd)
        if worker.output_fd == fd:
            worker.output_fd = None
        worker.output.flush()

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if self._watchdog is not None and pid == self._watchdog.pid:
                self._watchdog.returncode = os.waitstatus_to_exitcode(status)
                logger.warning(
                    "watchdog (pid %s) exited; orphan protection relies on parent-death signals", pid
                )
                self._watchdog = None
                continue
            for worker in self.workers.values():
                if worker.pid == pid:
                    self._on_exit(worker, status)
                    break
            # Anything else is an orphaned grandchild we adopted as subreaper: reaped, nothing more.

    def _on_exit(self, worker: Worker, wait_status: int) -> None:
        now, wall = self._clock(), self._wall()
        pid = worker.pid
        was_stopping = worker.state is S.STOPPING
        peak = worker.peak_memory_bytes or None
        exit_ = worker.exited(wait_status, now, wall)
        if pid is not None:
            # Members of its group may remain (children it did not stop): stop them too.
            self._groups[pid] = _Group(pid, now + self.settings.orphan_grace_s)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGTERM)
        reason = exit_.reason
        if was_stopping and exit_.cause is None and not exit_.is_recycle:
            reason = "requested"
        self.history.record(
            Event(
                self.project,
                worker.name,
                wall,
                "stop",
                pid=pid,
                reason=reason,
                exit_status=exit_.status if exit_.status is not None else -(exit_.signal or 0),
                runtime_seconds=round(exit_.runtime_s, 3),
                peak_memory_bytes=peak,
            )
        )
        assert worker.last_exit is not None
        worker.last_exit["reason"] = reason
        worker.output.note(f"exited ({reason}) after {exit_.runtime_s:.1f}s")
        self._probe_targets_changed()
        if was_stopping and not worker.stop_cause:
            self._stopped_on_request(worker, reason, now)
        else:
            self._after_exit(worker, exit_, now)

    def _stopped_on_request(self, worker: Worker, reason: str, now: float) -> None:
        logger.info("%s: stopped (%s)", worker.name, reason)
        worker.set_state(S.STOPPED)
        if worker.restart_after_stop and not self._exiting:
            worker.restart_after_stop = False
            worker.restarts += 1
            self._spawn(worker, now)
            return
        worker.restart_after_stop = False
        self._notify_waiters(worker)

    def _after_exit(self, worker: Worker, exit_: Exit, now: float) -> None:
        if self._exiting:
            worker.set_state(S.STOPPED)
            self._notify_waiters(worker)
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
            self._notify_waiters(worker)
        elif decision.action is Action.STOP:
            logger.info(
                "%s: exited (%s); restart policy %s leaves it stopped",
                worker.name,
                exit_.reason,
                worker.policy.restart,
            )
            worker.set_state(S.STOPPED)
            self._notify_waiters(worker)
        elif decision.delay_s <= 0:
            log = logger.info if not decision.counted else logger.warning
            log("%s: exited (%s), restarting now", worker.name, exit_.reason)
            worker.restarts += 1
            self._spawn(worker, now)
        else:
            logger.warning(
                "%s: exited (%s), restarting in %.1fs", worker.name, exit_.reason, decision.delay_s
            )
            worker.restarts += 1
            worker.set_state(S.BACKOFF)
            worker.next_start_at = now + decision.delay_s
            self._notify_waiters(worker)

    # -- stopping ----------------------------------------------------------------

    def _request_stop(
        self, worker: Worker, now: float, *, cause: str | None = None, planned: bool = False
    ) -> None:
        """Ask ``worker`` to stop: SIGTERM now, SIGKILL to its group after grace."""
        worker.want_start = False
        if worker.state in (S.BACKOFF, S.FATAL):
            worker.next_start_at = None
            worker.set_state(S.STOPPED)
            self._notify_waiters(worker)
            return
        if not worker.state.has_process:
            self._notify_waiters(worker)
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
        worker.stop_deadline = now + budget + (_RUNNER_EXIT_MARGIN_S if worker.via_runner else 0.0)
        logger.info("%s: stopping (pid %s%s)", worker.name, worker.pid, f", {cause}" if cause else "")
        worker.signal(signal.SIGTERM, group=worker.group_signals)

    def _stop_for_exit(self, now: float) -> None:
        for worker in self.workers.values():
            worker.want_start = False
            if worker.state is S.STOPPING or worker.state is S.STOPPED:
                continue
            if worker.state.has_process and self._dependents_running(worker):
                continue  # stop before: what depends on it goes down first
            self._request_stop(worker, now)

    def _dependents_running(self, worker: Worker) -> bool:
        return any(
            worker.name in other.config.depends_on and other.state.has_process
            for other in self.workers.values()
        )

    def _all_down(self) -> bool:
        return not self._groups and all(not w.state.has_process for w in self.workers.values())

    def _begin_exit(self, why: str) -> None:
        if self._exiting:
            return
        logger.info("stopping all workers (%s)", why)
        self._exiting = True

    def _force(self) -> None:
        logger.warning("second interrupt: killing all workers now")
        self._forced = True
        for worker in self.workers.values():
            worker.signal(signal.SIGKILL, group=True)
        for group in self._groups.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group.pgid, signal.SIGKILL)

    def _sweep_groups(self, now: float) -> None:
        for pgid, group in list(self._groups.items()):
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                del self._groups[pgid]
                self._unwatch_group(pgid)
                continue
            except PermissionError:
                pass
            if now >= group.kill_at:
                logger.warning("leftover processes of group %s did not exit, killing them", pgid)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, signal.SIGKILL)
                group.kill_at = now + 1.0

    # -- sampling, limits, probes ----------------------------------------------------

    def _sample(self, now: float, wall: float) -> None:
        for worker in self.workers.values():
            if not worker.state.has_process or worker.sampler is None:
                continue
            sample = worker.sampler.sample()
            if sample is None:
                continue
            worker.observe(sample, wall)
            if worker.state is S.STOPPING:
                continue
            if worker.limits is not None:
                verdict = worker.limits.observe(LimitSample(sample), now)
                if verdict is not None:
                    logger.warning("%s: %s: recycling", worker.name, verdict.detail)
                    self._request_stop(worker, now, cause=str(verdict.reason), planned=True)
                    if verdict.hard:
                        worker.signal(signal.SIGKILL, group=True)
                    continue
            runtime = worker.config.max_runtime_s
            if (
                worker.supervised_from_outside
                and runtime is not None
                and worker.started_at is not None
                and now - worker.started_at >= runtime
            ):
                logger.info("%s: reached max runtime %.0fs: recycling", worker.name, runtime)
                self._request_stop(worker, now, cause="max_runtime", planned=True)

    def _probe_targets_changed(self) -> None:
        targets: dict[str, tuple[str, int, int, float]] = {}
        for worker in self.workers.values():
            port = worker.config.health_port
            if port and worker.state.has_process and worker.started_at is not None:
                targets[worker.name] = (worker.config.health_host, port, worker.generation, worker.started_at)
        self._probe_targets = targets

    def _probe_loop(self) -> None:
        """Prober thread: GET /health of each worker that has a port; results go to the loop."""
        settings = self.settings
        while not self._probe_stop.wait(settings.probe_period_s):
            now = self._clock()
            for name, (host, port, generation, started_at) in list(self._probe_targets.items()):
                if now - started_at < settings.probe_delay_s or self._probe_stop.is_set():
                    continue
                ok, detail = probe_health(host, port, settings.probe_timeout_s)
                self._probe_results.put((name, generation, ok, detail))
            self._wake()

    def _apply_probe_results(self) -> None:
        now = self._clock()
        while True:
            try:
                name, generation, ok, detail = self._probe_results.get_nowait()
            except queue.Empty:
                return
            worker = self.workers[name]
            if worker.generation != generation or worker.state not in (S.STARTING, S.RUNNING):
                continue
            worker.probe_detail = detail
            if ok:
                worker.probe_failures = 0
                continue
            worker.probe_failures += 1
            logger.warning(
                "%s: health probe failed (%d/%d): %s",
                name,
                worker.probe_failures,
                self.settings.probe_failure_threshold,
                detail,
            )
            if worker.probe_failures >= self.settings.probe_failure_threshold and not self._exiting:
                self._request_stop(worker, now, cause="liveness", planned=False)

    # -- control requests ---------------------------------------------------------

    def _handle_request(self, request: dict[str, Any], peer: Peer) -> None:
        cmd = request.get("cmd")
        now = self._clock()
        if cmd == "ping":
            peer.send({"ok": True, "pid": os.getpid(), "project": self.project})
            return
        if cmd == "status":
            peer.send(
                {
                    "ok": True,
                    "pid": os.getpid(),
                    "project": self.project,
                    "workers": [w.status(now) for w in self.workers.values()],
                }
            )
            return
        if cmd == "down":
            self._begin_exit("procguard down")
            peer.send({"ok": True, "pid": os.getpid(), "message": "stopping all workers"}, close=False)
            self._down_peers.append(peer)
            return
        if cmd not in ("start", "stop", "restart"):
            peer.send(
                {
                    "ok": False,
                    "exit_status": 2,
                    "error": f"unknown command {cmd!r} (use ping, status, start, stop, restart or down)",
                }
            )
            return
        name = request.get("name")
        worker = self.workers.get(name) if isinstance(name, str) else None
        if worker is None:
            peer.send(
                {
                    "ok": False,
                    "exit_status": 2,
                    "error": f"unknown worker {name!r} (use one of: {', '.join(self.workers)})",
                }
            )
            return
        if self._exiting:
            peer.send({"ok": False, "exit_status": 1, "error": "the supervisor is shutting down"})
            return
        reply = _reply_when(peer, cmd)
        if cmd == "stop":
            if not worker.state.has_process and worker.state is not S.BACKOFF:
                worker.want_start = False
                peer.send({"ok": True, "message": f"{worker.name} is already {worker.state}"})
                return
            worker.waiters.append(reply)
            self._request_stop(worker, now)
        elif cmd == "start":
            if worker.state.has_process:
                peer.send(
                    {"ok": True, "message": f"{worker.name} is already {worker.state}", "pid": worker.pid}
                )
                return
            worker.record = Record()  # a start by hand clears FATAL and the start-limit count
            worker.next_start_at = None
            if worker.state is S.BACKOFF:
                worker.set_state(S.STOPPED)
            worker.waiters.append(reply)
            self._spawn(worker, now)
        else:  # restart
            worker.record = Record()
            if worker.state.has_process:
                worker.waiters.append(reply)
                worker.restart_after_stop = True
                if worker.state is not S.STOPPING:
                    self._request_stop(worker, now)
            else:
                if worker.state is S.BACKOFF:
                    worker.set_state(S.STOPPED)
                worker.waiters.append(reply)
                worker.restarts += 1
                self._spawn(worker, now)
        self._publish(now)

    def _notify_waiters(self, worker: Worker) -> None:
        waiters, worker.waiters = worker.waiters, []
        for waiter in waiters:
            waiter(worker)

    # -- publication ---------------------------------------------------------------

    def _publish(self, now: float) -> None:
        self._next_publish = now + PUBLISH_INTERVAL_S
        self._publish_pending = False
        statuses: list[dict[str, Any]] = []
        snapshots: list[WorkerSnapshot] = []
        for worker in self.workers.values():
            status = worker.status(now)
            status["samples"] = list(worker.samples)
            statuses.append(status)
            snapshots.append(_snapshot(worker, now))
        self._view = View(
            project=self.project, supervisor_pid=os.getpid(), workers=statuses, snapshots=snapshots
        )

    # -- signals, wake-ups, watchdog ---------------------------------------------------

    def _install_signals(self) -> dict[int, Any]:
        previous: dict[int, Any] = {}
        if threading.current_thread() is not threading.main_thread():
            return previous
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP):
            previous[signum] = signal.signal(signum, self._on_signal)
        previous[-1] = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        return previous

    def _restore_signals(self, previous: dict[int, Any]) -> None:
        if -1 in previous:
            signal.set_wakeup_fd(previous.pop(-1))
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    def _on_signal(self, signum: int, _frame: object) -> None:
        """Only record: the loop acts (no logging in a signal handler)."""
        if signum != signal.SIGCHLD:
            self._signals.append(signum)

    def _handle_signals(self) -> None:
        while self._signals:
            signum = self._signals.pop(0)
            if signum == signal.SIGHUP:
                logger.info("SIGHUP ignored (use 'procguard restart NAME' to restart a worker)")
                continue
            if self._exiting:
                self._force()
            else:
                self._begin_exit(signal.Signals(signum).name)

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"\0")

    def _drain_wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self._wake_r, 4096):
                pass

    def _start_watchdog(self) -> None:
        if not self.settings.watchdog:
            return
        try:
            self._watchdog = start_watchdog()
        except OSError as error:
            logger.warning("cannot start the orphan watchdog: %s", error)
            self._watchdog = None

    def _watch_group(self, pgid: int) -> None:
        self._tell_watchdog(b"+%d\n" % pgid)

    def _unwatch_group(self, pgid: int) -> None:
        self._tell_watchdog(b"-%d\n" % pgid)

    def _tell_watchdog(self, line: bytes) -> None:
        watchdog = self._watchdog
        if watchdog is None or watchdog.stdin is None:
            return
        try:
            watchdog.stdin.write(line)
            watchdog.stdin.flush()
        except OSError as error:
            if error.errno != errno.EPIPE:
                logger.warning("watchdog: %s", error)

    def _shutdown_everything(self) -> None:
        """Last resort on the way out (normal or not): nothing of ours stays behind."""
        for worker in self.workers.values():
            if worker.state.has_process:
                worker.signal(signal.SIGKILL, group=True)
        for pgid in list(self._groups):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
        deadline = self._clock() + 5.0
        while any(w.proc is not None for w in self.workers.values()) and self._clock() < deadline:
            self._reap()
            time.sleep(0.01)
        self._reap()
        for worker in self.workers.values():
            if worker.output_fd is not None:
                with contextlib.suppress(KeyError, ValueError):
                    self._selector.unregister(worker.output_fd)
                os.close(worker.output_fd)
                worker.output_fd = None
            worker.output.close()
        if self._watchdog is not None and self._watchdog.stdin is not None:
            with contextlib.suppress(OSError):
                self._watchdog.stdin.close()  # EOF with an empty list: it exits quietly
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._watchdog.wait(timeout=2)
        if self.status_server is not None:
            self.status_server.close()
        if self.control is not None:
            self.control.close()
        self.history.close()
        self._selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)


def _reply_when(peer: Peer, cmd: str) -> Callable[[Worker], None]:
    def reply(worker: Worker) -> None:
        ok = (cmd == "stop" and not worker.state.has_process) or (cmd != "stop" and worker.state.has_process)
        message = f"{worker.name} is {worker.state}" + (f" (pid {worker.pid})" if worker.pid else "")
        if not ok and worker.last_exit:
            message += f"; last exit: {worker.last_exit['reason']}"
        peer.send(
            {
                "ok": ok,
                "message": message,
                "pid": worker.pid,
                "state": worker.state.value,
                **({} if ok else {"error": message, "exit_status": 1}),
            }
        )

    return reply


def _snapshot(worker: Worker, now: float) -> WorkerSnapshot:
    sample = worker.last_sample if worker.state.has_process else None
    running = worker.state in (S.STARTING, S.RUNNING)
    healthy = running and worker.probe_failures == 0
    reason = "healthy" if healthy else (worker.probe_detail or str(worker.state))
    return WorkerSnapshot(
        name=worker.name,
        pid=worker.pid or 0,
        health=HealthStatus(healthy, reason if not healthy else "healthy"),
        ready=HealthStatus(worker.state is S.RUNNING, str(worker.state)),
        started=worker.state.has_process,
        stopping=worker.state is S.STOPPING,
        uptime_seconds=worker.uptime(now) or 0.0,
        cpu_percent=0.0 if sample is None else sample.cpu_percent,
        memory_bytes=0 if sample is None else sample.memory_bytes,
        num_children=0 if sample is None else max(0, sample.num_processes - 1),
        memory_limit_bytes=worker.config.memory_limit_bytes,
        cpu_limit_percent=worker.config.cpu_limit_percent,
        max_runtime_seconds=worker.config.max_runtime_s,
        stop_reason=None if worker.last_exit is None else str(worker.last_exit.get("reason")),
        stop_reasons_total={},
    )


def release_memory() -> None:
    """Give the start-up garbage back to the OS (the supervisor lives for days at its low-water mark).

    Config parsing, the stale-process scan and 50 spawns leave freed heap
    pages behind; glibc keeps them unless asked (``malloc_trim``).
    """
    import gc

    gc.collect()
    try:
        import ctypes

        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def probe_health(host: str, port: int, timeout: float) -> tuple[bool, str]:
    """GET http://host:port/health; ``(True, "HTTP 200")`` when healthy, else ``(False, why)``.

    A raw HTTP/1.0 request on a socket: the supervisor does not load
    urllib/http.client (and their ssl import) for a one-line status check.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(
                b"GET /health HTTP/1.0\r\nHost: %s\r\nUser-Agent: procguard-supervisor\r\n\r\n"
                % host.encode()
            )
            head = b""
            while b"\r\n" not in head and len(head) < 1024:
                chunk = sock.recv(1024)
                if not chunk:
                    break
                head += chunk
    except OSError as error:
        return False, (error.strerror or str(error))[:120]
    parts = head.split(b"\r\n", 1)[0].split()
    if len(parts) < 2 or not parts[1].isdigit():
        return False, "not an HTTP response"
    code = int(parts[1])
    return code == 200, f"HTTP {code}"


def check_names(config: StackConfig, names: Sequence[str]) -> None:
    """UsageError (exit 2) naming the unknown worker and the known ones."""
    for name in names:
        if name not in config.workers:
            msg = f"unknown worker {name!r} in {config.path.name} (use one of: {', '.join(config.workers)})"
            raise UsageError(msg)
