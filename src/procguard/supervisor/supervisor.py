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
import dataclasses
import logging
import math
import os
import selectors
import signal
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from ..config import StackConfig, WorkerConfig, port_clash, start_order
from ..copies import copy_name
from ..errors import PATH_SHOWN_MAX, ProcguardError, UsageError, shown
from ..heap import release_memory
from ..instances.marker import new_run, run_pattern
from ..instances.spawn import become_child_subreaper
from ..instances.statedir import namespace_of
from ..listen_fds import ListenAddress
from .accounts import check_accounts
from .autoscaler import Autoscaler
from .bluegreen import BlueGreen
from .bulk import Batch
from .commands import ControlCommands
from .control import ControlServer, Peer, socket_path
from .function_health import answers_ready
from .history import History, db_path
from .leftovers import LeftoverGroups
from .lifecycle import Lifecycle, deps_ready, next_deadline, waits_for_readiness
from .logs import RotatingFile, WorkerOutput, log_dir, log_path
from .probe import Prober, probe_health, probe_targets
from .reload import StackReload
from .settings import TUNING_ENV, Settings
from .shutdown import StopAll
from .states import WorkerState
from .view import View, build_view
from .wakeup import SignalInbox, WakeupPipe
from .watchdog import WatchdogLink
from .worker import Worker, default_procguard

if TYPE_CHECKING:
    from ..autoscale import AutoscaleRule
    from .healthports import HealthPorts, ServingThread
    from .statuspage import StatusServer

logger = logging.getLogger(__name__)

S = WorkerState

#: The status page's view is refreshed at most this often (and after each sample).
PUBLISH_INTERVAL_S = 0.25
#: How often a worker waiting for a dependency's /ready reads it again.
READINESS_POLL_S = 0.1
#: A worker due for a sample this close after a regular tick is sampled at that tick.
TICK_SLACK_S = 0.001
#: At most this many reads of a reaped worker's output before its stop note (64 KiB each).
DRAIN_READS = 16

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
        self._terminal = terminal
        self._procguard = list(procguard) if procguard is not None else default_procguard()
        # One id in every marker this supervisor gives out: when it is gone, its
        # watchdog stops what still carries one (a grandchild that left its group).
        self.run_id = new_run()
        #: Every copy of every worker, by copy name, in procguard.toml's order then by copy.
        self.workers: dict[str, Worker] = {}
        self._leaving: list[Worker] = []  # copies taken away, forgotten at the end of the loop's turn
        #: Each ``listen`` worker's socket: bound before its first process, shared by copies and generations.
        self._listen: dict[str, tuple[ListenAddress, socket.socket]] = {}
        self._width = max(len(copy_name(n, c.instances, plain_first=c.instances == 1))
                          for n, c in config.workers.items())
        for name, worker_config in config.workers.items():
            self.add_copies(name, range(1, worker_config.instances + 1), worker_config.instances)
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
            open_health=self._open_sockets,
            release_health=self._release_health,
            may_spawn=self._port_free_for,
            clock=clock,
            wall_clock=wall_clock,
        )
        self._bluegreen = BlueGreen(
            lifecycle=self.lifecycle,
            make_generation=self._make_generation,
            replace=self._replace,
            forget=self._forget_generation,
            clock=clock,
            wall_clock=wall_clock,
        )
        self._stop_all = StopAll(self.workers, self.lifecycle, self._leftovers,
                                 generations=self._bluegreen.processes)
        self._commands = ControlCommands(
            project=self.project,
            workers=self.workers,
            lifecycle=self.lifecycle,
            stop_all=self._stop_all,
            publish=self._publish,
            reloader=self.reload,
            copies=self,
            bluegreen=self._bluegreen,
            clock=clock,
        )
        self._autoscaler = Autoscaler(
            project=self.project,
            rules=self._autoscale_rules,
            scaler=self._commands,
            history=self.history,
            wall_clock=wall_clock,
            warn_missing_after_s=self.settings.autoscale_missing_warn_s,
        )
        self._stack_reload = StackReload(
            workers=self.workers, lifecycle=self.lifecycle, make_copies=self._make_copies, clock=clock,
            bluegreen=self._bluegreen,
        )
        self._probing = False

    # -- copies (procguard.toml's instances, procguard scale) -------------------------

    def add_copies(self, group: str, indices: Sequence[int], count: int) -> list[Worker]:
        """Make copies ``indices`` of worker ``group`` (not started), each told there are ``count``."""
        return self._make_copies(self.config.workers[group], indices, count)

    def _make_copies(self, config: WorkerConfig, indices: Sequence[int], count: int) -> list[Worker]:
        """Copies ``indices`` of the worker ``config`` declares, their logs open, registered, not started
        (at start, for ``procguard scale``, and for a worker a reload adds or grows)."""
        group = config.name
        made = []
        names = [copy_name(group, index, plain_first=config.instances == 1) for index in indices]
        width = max([self._width, *map(len, names)])
        for index, name in zip(indices, names, strict=True):
            log = RotatingFile(
                log_path(self.state_dir, self.project, name),
                max_bytes=self.config.project.log_max_bytes,
                backups=self.config.project.log_backups,
            )
            output = WorkerOutput(name, log, terminal=self._terminal, width=width, clock=self._wall)
            worker = self._new_worker(config, output, index, count)
            self.workers[worker.name] = worker
            made.append(worker)
        self._order_workers()
        return made

    def _autoscale_rules(self) -> dict[str, AutoscaleRule]:
        """The autoscaled workers of the running config, with their rules."""
        return {name: c.autoscale for name, c in self.config.workers.items() if c.autoscale is not None}

    def _new_worker(self, config: WorkerConfig, output: WorkerOutput, index: int, count: int) -> Worker:
        """A :class:`Worker` of this stack: copy ``index`` of ``count``, or a new generation of that copy."""
        return Worker(
            config,
            project=self.project,
            base_dir=self.config.path.parent,
            procguard=self._procguard,
            output=output,
            state_dir=self.state_dir,
            run=self.run_id,
            index=index,
            count=count,
        )

    def _order_workers(self) -> None:
        """Keep the workers in procguard.toml's order, each worker's copies by number."""
        position = {name: i for i, name in enumerate(self.config.workers)}
        last = len(position)  # workers a reload removed, still stopping
        ordered = sorted(self.workers.values(), key=lambda w: (position.get(w.group, last), w.group, w.index))
        self.workers.clear()  # the same dict: the stop and the commands hold it
        self.workers.update((w.name, w) for w in ordered)

    def remove_copy(self, worker: Worker) -> None:
        """Forget a copy ``procguard scale`` took away (it has no process) once this turn of the
        loop is over (the loop may be going through the workers now)."""
        assert not worker.state.has_process
        self._leaving.append(worker)

    def _forget_leaving(self) -> None:
        """Drop the copies taken away: their pipes, log, health port, place among the workers."""
        leaving, self._leaving = self._leaving, []
        for worker in leaving:
            self._forget(worker)

    def _forget(self, worker: Worker) -> None:
        self._close_output(worker)
        self._release_health(worker)
        del self.workers[worker.name]
        if not any(w.group == worker.group for w in self.workers.values()):
            self._release_listen(worker.group)
        self._probe_targets_changed()
        self._publish_pending = True

    def _close_output(self, worker: Worker, *, keep_log: bool = False) -> None:
        """Stop reading a worker's link and output pipe; close its log (``keep_log``: only flush it,
        for a generation whose log is its copy's)."""
        self._unwatch_link(worker)
        if worker.output_fd is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(worker.output_fd)
            os.close(worker.output_fd)
            worker.output_fd = None
        if keep_log:
            worker.output.flush()
        else:
            worker.output.close()

    # -- generations of a copy (a blue-green reload) ----------------------------------

    def _make_generation(self, copy: Worker, config: WorkerConfig) -> Worker:
        """A second process for ``copy`` (a reload's new generation): its own pipes, the copy's log."""
        output = WorkerOutput(copy.name, copy.output.log, terminal=self._terminal, width=self._width,
                              clock=self._wall)
        worker = self._new_worker(config, output, copy.index, copy.count)
        worker.name = copy.name  # the copy's name, whatever the new config's count makes of it
        worker.group = copy.group
        return worker

    def _replace(self, old: Worker, new: Worker) -> None:
        """``new`` takes ``old``'s place: among the workers, on its health port, for the probes."""
        self.workers[old.name] = new
        if self._health_ports is not None:
            self._health_ports.hand_over(new)
        self._probe_targets_changed()
        self._publish_pending = True

    def _forget_generation(self, worker: Worker) -> None:
        """Drop a generation whose process is gone (not a copy: its log and ports stay the copy's)."""
        self._close_output(worker, keep_log=True)

    def _every(self) -> list[Worker]:
        """Every process the loop watches: the copies, and the generations a reload has beside them."""
        return [*self.workers.values(), *self._bluegreen.processes()]

    def port_clash(self, group: str, count: int) -> str | None:
        """The health port ``group`` with ``count`` copies would share (the others as they run now)."""
        counts: dict[str, int] = {}
        for worker in self.workers.values():
            counts[worker.group] = max(counts.get(worker.group, 0), worker.index)
        counts[group] = count
        project = dataclasses.replace(self.config.project, status_port=self.status_port)
        return port_clash(project, self.config.workers, counts=counts)

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
        try:
            self._selector.register(self._wakeup.fd, selectors.EVENT_READ, self._wakeup.drain)
            self.control = ControlServer(
                socket_path(self.state_dir, self.project), self._commands.handle, self._selector
            )
            if self.status_port:
                self._start_status_server()
            self._start_prober()
            logger.info(
                "supervisor of %s started (pid %s, %d workers: %s)",
                self.project,
                os.getpid(),
                len(selected),
                ", ".join(selected),
            )
            for worker in self.workers.values():
                if worker.group in selected:
                    worker.want_start = True
            self._loop()
        finally:
            self._prober.stop()
            self._stop_all.kill_everything(self._reap, self._clock)
            self._close()
            self._signals.restore()
            if self._probing:
                self._prober.join()
            self._wakeup.close()
        logger.info("supervisor of %s stopped", self.project)
        return 1 if self._stop_all.forced else 0

    def _start_prober(self) -> None:
        """Start the prober thread once a worker needs it (function workers with a health port)."""
        if not self._probing and any(w.publishes_health for w in self.workers.values()):
            self._prober.start()
            self._probing = True

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
            self._drop_retired()
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
            self._forget_leaving()

    def _next_timeout(self, now: float) -> float:
        deadlines = []
        if any(w.next_sample_at is None and w.sampler is not None for w in self._every()):
            deadlines.append(self._next_sample)  # a worker not sampled yet: at the next tick
        early = self._next_early_sample()
        if early is not None:
            deadlines.append(early)
        if self._publish_pending:
            deadlines.append(self._next_publish)
        for worker in self._every():
            deadline = next_deadline(worker, self.settings.start_period_s)
            if deadline is not None:
                deadlines.append(deadline)
        polling = self._bluegreen.next_deadline()
        if polling is not None:
            deadlines.append(polling)
        if self._leftovers:
            deadlines.append(now + 0.05)
        scaling = self._autoscaler.next_due()
        if scaling is not None and not self.lifecycle.exiting:
            deadlines.append(scaling)
        if any(waits_for_readiness(w) for w in self.workers.values()):
            deadlines.append(now + READINESS_POLL_S)  # a dependency's /ready is read, nothing wakes us
        if not deadlines:  # nothing is due: the loop waits for an event (or the longest sampling period)
            return self.settings.rest_sample_interval_s
        return max(0.0, min(deadlines) - now)

    def _tick(self, now: float) -> None:
        wall = self._wall()
        states = [worker.state for worker in self.workers.values()]
        for worker in self._every():
            self.lifecycle.tick(worker, now)
        self._bluegreen.step()
        if self.lifecycle.exiting:
            self._stop_all.step(now)
        else:
            for worker in self.workers.values():
                if (
                    worker.want_start
                    and worker.state in (S.STOPPED, S.FATAL)
                    and deps_ready(worker, self.workers, lambda dep: answers_ready(dep, now, wall))
                    and self._port_free_for(worker)
                ):
                    worker.want_start = False
                    self.lifecycle.spawn(worker, now)
            self._autoscaler.tick(now)
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
        due = [w.next_sample_at for w in self._every() if w.next_sample_at is not None]
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
        for worker in self._every():
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
                if self.lifecycle.exiting:
                    logger.info("SIGHUP ignored: the stack is stopping")
                    continue
                try:
                    self.reload(None)
                except ProcguardError as error:
                    logger.error("SIGHUP: %s; nothing changed, going on with the running config", error)
                except OSError as error:
                    logger.error("SIGHUP: reload failed: %s", error)
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
            for worker in self._every():
                if worker.pid == pid:
                    self._unwatch_link(worker)
                    self._drain_output(worker)
                    self.lifecycle.exited(worker, status)
                    break
            # Anything else is an orphaned grandchild we adopted as subreaper: reaped, nothing more.

    def _apply_probe_results(self) -> None:
        now = self._clock()
        for result in self._prober.results():
            worker = self.workers.get(result.name)
            if worker is not None:  # None: removed by a reload, or a copy taken away, since
                self.lifecycle.probe_result(worker, result, now)

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

    def _drain_output(self, worker: Worker) -> None:
        """Take what the reaped process wrote before it exited, so its stop note comes after it
        (the loop may reap it before it has read the pipe). Bounded: a child of the worker that
        still holds the pipe and keeps writing is read on the loop's next turns."""
        for _ in range(DRAIN_READS):
            if worker.output_fd is None or not self._read_output(worker, worker.output_fd):
                return

    def _read_output(self, worker: Worker, fd: int) -> bool:
        """Read one chunk of the worker's output; False once none is waiting (or the pipe is closed)."""
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if data:
            worker.output.feed(data)
            return True
        self._selector.unregister(fd)
        os.close(fd)
        if worker.output_fd == fd:
            worker.output_fd = None
        worker.output.flush()
        return False

    def _serving_thread(self) -> ServingThread:
        if self._serving is None:
            from .healthports import ServingThread

            self._serving = ServingThread()
        return self._serving

    def _open_sockets(self, worker: Worker) -> None:
        """What the supervisor binds for a worker before its spawn: its ``listen`` socket, its health port."""
        self._open_listen(worker)
        self._open_health(worker)

    def _open_listen(self, worker: Worker) -> None:
        """Hand ``worker`` its group's ``listen`` socket, bound now if it is not yet (or at a new address).

        A socket stays bound while any copy of the worker is part of the stack;
        processes started before a change of address keep the socket they have.
        """
        from ..listen_fds import bind

        address = worker.config.listen
        held = self._listen.get(worker.group)
        if held is not None and held[0] != address:
            self._release_listen(worker.group)
            held = None
        if address is None:
            worker.listen_fd = None
            return
        if held is None:
            held = (address, bind(address))
            self._listen[worker.group] = held
            logger.info("%s: listening on %s (handed to each process as fd 3)", worker.group, address)
        worker.listen_fd = held[1].fileno()

    def _release_listen(self, group: str) -> None:
        held = self._listen.pop(group, None)
        if held is not None:
            held[1].close()
            logger.info("%s: %s released", group, held[0])

    def _open_health(self, worker: Worker) -> None:
        """Bind the health port the supervisor serves for a worker (before its spawn)."""
        if not worker.holds_health_port:
            return
        if self._health_ports is None:
            from .healthports import HealthPorts

            self._health_ports = HealthPorts(self._serving_thread(), clock=self._clock, wall_clock=self._wall)
        self._health_ports.open(worker)

    def _port_free_for(self, worker: Worker) -> bool:
        """False while another worker holds the health port this one's settings (new ones first) name.

        After a reload two workers may trade ports, or an added worker take a
        removed one's: each waits until the other has let go, rather than fail
        to bind and back off.
        """
        config = worker.pending_config or worker.config
        port = config.limits.health_port
        if port is None or self._health_ports is None:
            return True
        holder = self._health_ports.holder(port)
        return holder is None or holder == worker.name

    def _release_health(self, worker: Worker) -> None:
        """Let go of a worker's health port (new settings bind it again at its next spawn)."""
        if self._health_ports is not None:
            self._health_ports.close(worker.name)

    def _probe_targets_changed(self) -> None:
        self._prober.set_targets(probe_targets(self.workers.values(), wall_clock=self._wall))

    # -- config reload -------------------------------------------------------------------

    def reload(self, peer: Peer | None) -> None:
        """Re-read the stack's procguard.toml and apply the difference (``procguard reload``, SIGHUP).

        Raises :class:`~procguard.errors.UsageError` (one line) for a file that
        does not load or changes a setting fixed while the stack runs: then
        nothing has changed. The answer goes to ``peer``, or to the log when
        None (SIGHUP). See :mod:`.reload`.
        """
        from ..config import load_config
        from .reconfig import plan_reload

        new = load_config(self.config.path)
        check_accounts(new)
        keep = ("status_port",) if self._status_port_origin == "--status-port" else ()
        plan = plan_reload(self.config, new, keep=keep)
        logger.info(
            "reloading %s: %d added, %d removed, %d changed, %d unchanged",
            self.config.path,
            len(plan.added),
            len(plan.removed),
            len(plan.changed),
            len(plan.unchanged),
        )
        self.config = new
        for worker in self.workers.values():  # log rotation settings apply to every log from now on
            worker.output.log.max_bytes = new.project.log_max_bytes
            worker.output.log.backups = new.project.log_backups
        self._stack_reload.apply(plan, new, lambda names, footer: Batch(peer, names, footer=footer))
        self._start_prober()
        self._probe_targets_changed()
        self._publish_pending = True

    def _drop_retired(self) -> None:
        """Workers a reload removed leave once their process is gone (between two turns of the loop)."""
        gone = [w for w in self.workers.values() if w.retiring and w.proc is None and not w.state.has_process]
        for worker in gone:
            self._forget(worker)
            logger.info("%s: removed from the stack", worker.name)

    # -- publication and the way out ---------------------------------------------------

    def _publish(self, now: float) -> None:
        self._next_publish = now + PUBLISH_INTERVAL_S
        self._publish_pending = False
        if self.status_server is None:
            return  # the status page is the view's only reader: without it there is nothing to build
        self._view = build_view(self.project, os.getpid(), self.workers.values(), now, self._wall())

    def _close(self) -> None:
        """Close what the loop used: output pipes and logs, listen sockets, watchdog, servers, history."""
        for worker in self._bluegreen.processes():
            self._forget_generation(worker)
        for group in list(self._listen):
            self._release_listen(group)
        for worker in self.workers.values():
            self._close_output(worker)
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

