"""The event loop of ``procguard up``: wait, then hand each event to the part that handles it.

One thread does all the deciding (honcho's manager is the model: one loop
over events), so no worker state is ever shared between threads:

- a ``selectors`` loop waits on the workers' output pipes and links
  (:mod:`.worker_link`: what a worker reports about itself), the control
  socket and a wake-up pipe that signal handlers (``signal.set_wakeup_fd``)
  and the health prober thread write to (:mod:`.wakeup`);
- SIGCHLD only wakes the loop; the loop reaps with ``waitpid(-1, WNOHANG)``
  (it is a child subreaper, so orphaned grandchildren are reaped too);
- timers (backoff, stop deadlines, start period, sampling) are computed
  from the workers' fields at each turn, with :func:`time.monotonic`;
  each worker is due for its next sample when
  :func:`procguard.policy.next_sample_delay` says (every 2 s, up to 10 s at
  rest, down to 25 ms while it grows towards its memory limit); the workers
  at the regular pace or slower are sampled together on a 2 s tick, and
  nothing wakes the loop when no worker is due.

What happens to a worker is :mod:`.lifecycle`'s; stopping the whole stack
is :mod:`.shutdown`'s; control requests are :mod:`.commands`'; probing is
:mod:`.probe`'s; the status page and ``/metrics`` run in a server thread
that reads the immutable :class:`.view.View` this loop publishes after each
change (:meth:`Supervisor.view`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import selectors
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from ..config import StackConfig, start_order
from ..errors import PATH_SHOWN_MAX, UsageError, shown
from ..heap import release_memory
from ..instances.marker import new_run, run_pattern
from ..instances.spawn import become_child_subreaper
from ..instances.statedir import namespace_of
from .commands import ControlCommands
from .control import ControlServer, socket_path
from .history import History, db_path
from .leftovers import LeftoverGroups
from .lifecycle import Lifecycle, deps_ready, next_deadline
from .logs import RotatingFile, WorkerOutput, log_dir, log_path
from .probe import Prober, probe_health, probe_targets
from .settings import TUNING_ENV, Settings
from .shutdown import StopAll
from .states import WorkerState
from .view import View, build_view
from .wakeup import SignalInbox, WakeupPipe
from .watchdog import WatchdogLink
from .worker import Worker, default_procguard

if TYPE_CHECKING:
    from .healthports import HealthPorts, ServingThread
    from .statuspage import StatusServer

logger = logging.getLogger(__name__)

S = WorkerState

#: The status page's view is refreshed at most this often (and after each sample).
PUBLISH_INTERVAL_S = 0.25
#: A worker due for a sample this close after a regular tick is sampled at that tick.
TICK_SLACK_S = 0.001

__all__ = [
    "PUBLISH_INTERVAL_S",
    "TUNING_ENV",
    "Settings",
    "Supervisor",
    "View",
    "probe_health",
    "release_memory",
]


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
        # Where the port came from, for the one line that says it is taken.
        self._status_port_origin = (
            f"{config.path}: project.status_port" if status_port is None else "--status-port"
        )
        self.status_server: StatusServer | None = None
        # One HTTP thread for the status page and the workers' health ports, made on first use.
        self._serving: ServingThread | None = None
        self._health_ports: HealthPorts | None = None
        self._clock = clock
        self._wall = wall_clock
        self._selector = selectors.DefaultSelector()
        self._wakeup = WakeupPipe()
        self._signals = SignalInbox(self._wakeup)
        self._next_sample = 0.0
        self._next_publish = 0.0
        self._publish_pending = True
        self._ready_sent = False
        self._on_ready: Callable[[], None] | None = None
        self._view = View(project=self.project, supervisor_pid=os.getpid())
        log_dir(state_dir, self.project, create=True)
        base_dir = config.path.parent
        width = max(len(name) for name in config.workers)
        argv = list(procguard) if procguard is not None else default_procguard()
        # One id in every marker this supervisor gives out: when it is gone, its
        # watchdog stops what still carries one (a grandchild that left its group).
        self.run_id = new_run()
        self.workers: dict[str, Worker] = {}
        for name, worker_config in config.workers.items():
            log = RotatingFile(
                log_path(state_dir, self.project, name),
                max_bytes=config.project.log_max_bytes,
                backups=config.project.log_backups,
            )
            output = WorkerOutput(name, log, terminal=terminal, width=width, clock=wall_clock)
            self.workers[name] = Worker(
                worker_config,
                project=self.project,
                base_dir=base_dir,
                procguard=argv,
                output=output,
                state_dir=state_dir,
                run=self.run_id,
            )
        self.history = History(db_path(state_dir))
        self.control: ControlServer | None = None
        self._watchdog = WatchdogLink(
            enabled=self.settings.watchdog,
            pattern=run_pattern(self.project, namespace_of(state_dir), self.run_id),
        )
        self._leftovers = LeftoverGroups(grace_s=self.settings.orphan_grace_s, watchdog=self._watchdog)
        self._prober = Prober(self.settings, wake=self._wakeup.wake, clock=clock)
        self.lifecycle = Lifecycle(
            project=self.project,
            settings=self.settings,
            history=self.history,
            leftovers=self._leftovers,
            watchdog=self._watchdog,
            on_spawned=self._watch_output,
            on_changed=self._probe_targets_changed,
            open_health=self._open_health,
            clock=clock,
            wall_clock=wall_clock,
        )
        self._stop_all = StopAll(self.workers, self.lifecycle, self._leftovers)
        self._commands = ControlCommands(
            project=self.project,
            workers=self.workers,
            lifecycle=self.lifecycle,
            stop_all=self._stop_all,
            publish=self._publish,
            clock=clock,
        )

    # -- public ----------------------------------------------------------------

    def release_waiters(self) -> None:
        """Close the connections of ``procguard down`` clients: they return when this is called.

        Call it after :meth:`run` once the stack's lock is released (so a
        ``down`` immediately followed by ``up`` never finds the old lock).
        Exiting the process does the same.
        """
        self._commands.release_waiters()

    def view(self) -> View:
        """The latest published state (safe to call from any thread; published while the status page runs)."""
        return self._view

    def run(self, names: Sequence[str] | None = None, *, on_ready: Callable[[], None] | None = None) -> int:
        """Start the selected workers (all by default) and supervise until stopped.

        Returns 0 after a requested stop (signal, ``down``), 1 if a stop had to
        be forced. Must run in the main thread (signal handlers).
        """
        selected = start_order(self.config, names)
        self._on_ready = on_ready
        become_child_subreaper()
        self._watchdog.start()
        self._signals.install()
        probing = False
        try:
            self._selector.register(self._wakeup.fd, selectors.EVENT_READ, self._wakeup.drain)
            self.control = ControlServer(
                socket_path(self.state_dir, self.project), self._commands.handle, self._selector
            )
            if self.status_port:
                self._start_status_server()
            if any(w.publishes_health for w in self.workers.values()):  # the only probed workers
                self._prober.start()
                probing = True
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
            self._prober.stop()
            self._stop_all.kill_everything(self._reap, self._clock)
            self._close()
            self._signals.restore()
            if probing:
                self._prober.join()
            self._wakeup.close()
        logger.info("supervisor of %s stopped", self.project)
        return 1 if self._stop_all.forced else 0

    def _start_status_server(self) -> None:
        from .statuspage import StatusServer  # only when asked for

        project = self.config.project
        host = project.status_host
        tls = None
        if project.status_tls_cert is not None and project.status_tls_key is not None:
            from ..health.tls import server_context  # only with TLS

            tls = server_context(
                project.status_tls_cert, project.status_tls_key, keys=("status_tls_cert", "status_tls_key")
            )
        try:
            self.status_server = StatusServer(
                self.view, host=host, port=self.status_port, serving=self._serving_thread().loop(), tls=tls
            )
        except OSError as error:
            port = self.status_port
            origin = shown(self._status_port_origin, quote=False, limit=PATH_SHOWN_MAX)
            msg = f"{origin}: cannot listen on {host}:{port} ({error.strerror}); use a free port"
            raise UsageError(msg) from None
        logger.info("status page on %s", self.status_server.url)

    # -- the loop --------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            now = self._clock()
            self._tick(now)
            if self.lifecycle.exiting and self._stop_all.done():
                return
            timeout = self._next_timeout(self._clock())
            for key, _mask in self._selector.select(timeout):
                key.data()
                self._publish_pending = True
            self._handle_signals()
            self._reap()
            self._apply_probe_results()
            if self._health_ports is not None:
                self._health_ports.reconcile(self.workers.values())

    def _next_timeout(self, now: float) -> float:
        deadlines = []
        if any(w.next_sample_at is None and w.sampler is not None for w in self.workers.values()):
            deadlines.append(self._next_sample)  # a worker not sampled yet: at the next tick
        early = self._next_early_sample()
        if early is not None:
            deadlines.append(early)
        if self._publish_pending:
            deadlines.append(self._next_publish)
        for worker in self.workers.values():
            deadline = next_deadline(worker, self.settings.start_period_s)
            if deadline is not None:
                deadlines.append(deadline)
        if self._leftovers:
            deadlines.append(now + 0.05)
        if not deadlines:  # nothing is due: the loop waits for an event (or the longest sampling period)
            return self.settings.rest_sample_interval_s
        return max(0.0, min(deadlines) - now)

    def _tick(self, now: float) -> None:
        wall = self._wall()
        states = [worker.state for worker in self.workers.values()]
        for worker in self.workers.values():
            self.lifecycle.tick(worker, now)
        if self.lifecycle.exiting:
            self._stop_all.step(now)
        else:
            for worker in self.workers.values():
                if (
                    worker.want_start
                    and worker.state in (S.STOPPED, S.FATAL)
                    and deps_ready(worker, self.workers)
                ):
                    worker.want_start = False
                    self.lifecycle.spawn(worker, now)
        if states != [worker.state for worker in self.workers.values()]:
            self._publish_pending = True  # a timer moved a worker: the page shows it within a moment
        sampled = now >= self._next_sample
        early = self._next_early_sample()
        if sampled or (early is not None and now >= early):
            self._sample(now, wall, regular=sampled)
        self._leftovers.sweep(now)
        if sampled or (self._publish_pending and now >= self._next_publish):
            self._publish(now)
        if not self._ready_sent and not any(w.want_start for w in self.workers.values()):
            self._ready_sent = True
            if self._on_ready is not None:
                self._on_ready()
            release_memory()

    def _next_early_sample(self) -> float | None:
        """When the next worker is due for a sample (None: no worker is; nothing wakes the loop for it)."""
        due = [w.next_sample_at for w in self.workers.values() if w.next_sample_at is not None]
        return min(due) if due else None

    def _sample(self, now: float, wall: float, *, regular: bool) -> None:
        """Sample the workers that are due: at a regular tick, those due at it (and any not sampled
        yet); between ticks, the ones paced faster (growing towards their memory limit).

        When each worker is due again is :func:`procguard.policy.next_sample_delay`'s rule, applied
        by the lifecycle after each sample. A worker paced at the regular period or slower is moved
        onto a tick (rounded down), so the workers at rest are sampled together, in one wake-up.
        """
        interval = self.settings.sample_interval_s
        if regular:  # the next tick: the ticks stay on one grid, whatever else wakes the loop
            self._next_sample += interval * (math.floor((now - self._next_sample) / interval) + 1)
        tick = self._next_sample
        for worker in self.workers.values():
            due = worker.next_sample_at
            if due is None and not regular:
                continue
            if due is not None and now < due - TICK_SLACK_S:
                continue
            self.lifecycle.sample(worker, now, wall, regular=regular)
            due = worker.next_sample_at
            if due is not None and due > tick and due - now >= interval - TICK_SLACK_S:
                worker.next_sample_at = tick + math.floor((due - tick) / interval) * interval
        if not regular:
            self._publish_pending = True  # published at the view's own pace, not every fast tick

    def _handle_signals(self) -> None:
        while (signum := self._signals.pop()) is not None:
            if signum == signal.SIGHUP:
                logger.info("SIGHUP ignored (use 'procguard restart NAME' to restart a worker)")
                continue
            if self.lifecycle.exiting:
                self._stop_all.force()
            else:
                self._stop_all.begin(f"{signal.Signals(signum).name} to procguard up")

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if self._watchdog.reaped(pid, status):
                continue
            for worker in self.workers.values():
                if worker.pid == pid:
                    self._unwatch_link(worker)
                    self.lifecycle.exited(worker, status)
                    break
            # Anything else is an orphaned grandchild we adopted as subreaper: reaped, nothing more.

    def _apply_probe_results(self) -> None:
        now = self._clock()
        for result in self._prober.results():
            self.lifecycle.probe_result(self.workers[result.name], result, now)

    # -- worker output and probe targets (the lifecycle's hooks) --------------------

    def _watch_output(self, worker: Worker) -> None:
        assert worker.output_fd is not None
        fd = worker.output_fd
        self._selector.register(fd, selectors.EVENT_READ, lambda: self._read_output(worker, fd))
        link = worker.link
        if link is not None:
            self._selector.register(link.fileno(), selectors.EVENT_READ, lambda: self._read_link(worker))

    def _read_link(self, worker: Worker) -> None:
        if not worker.read_link():
            self._unwatch_link(worker)  # every copy of the worker's end is closed
        self.lifecycle.worker_reported(worker, self._clock())

    def _unwatch_link(self, worker: Worker) -> None:
        link = worker.link
        if link is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(link.fileno())

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

    def _serving_thread(self) -> ServingThread:
        if self._serving is None:
            from .healthports import ServingThread

            self._serving = ServingThread()
        return self._serving

    def _open_health(self, worker: Worker) -> None:
        """Bind the health port the supervisor serves for a worker (before its spawn)."""
        if not worker.holds_health_port:
            return
        if self._health_ports is None:
            from .healthports import HealthPorts

            self._health_ports = HealthPorts(self._serving_thread(), clock=self._clock, wall_clock=self._wall)
        self._health_ports.open(worker)

    def _probe_targets_changed(self) -> None:
        self._prober.set_targets(probe_targets(self.workers.values(), wall_clock=self._wall))

    # -- publication and the way out ---------------------------------------------------

    def _publish(self, now: float) -> None:
        self._next_publish = now + PUBLISH_INTERVAL_S
        self._publish_pending = False
        if self.status_server is None:
            return  # the status page is the view's only reader: without it there is nothing to build
        self._view = build_view(self.project, os.getpid(), self.workers.values(), now, self._wall())

    def _close(self) -> None:
        """Close what the loop used: output pipes and logs, watchdog, servers, history."""
        for worker in self.workers.values():
            self._unwatch_link(worker)
            if worker.output_fd is not None:
                with contextlib.suppress(KeyError, ValueError):
                    self._selector.unregister(worker.output_fd)
                os.close(worker.output_fd)
                worker.output_fd = None
            worker.output.close()
        self._watchdog.close()
        if self._health_ports is not None:
            self._health_ports.close_all()
        if self.status_server is not None:
            self.status_server.close()
        if self._serving is not None:
            self._serving.close()
        if self.control is not None:
            self.control.close()
        self.history.close()
        self._selector.close()

