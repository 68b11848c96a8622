"""One supervised worker: its settings, its state, its current process.

A :class:`Worker` knows how to spawn its process, how to ask it to stop
and how to kill it; it keeps what the status page and ``status --json``
show (pid, restarts, uptime, memory, last exit) and the recent memory/CPU
samples for the chart. *When* to do any of that is decided by the event
loop in :mod:`.supervisor` with the pure rules of :mod:`.backoff` and
:mod:`procguard.policy`.

How a worker is run (the design choice, measured in bench/bench_supervisor.py):

- ``run = "pkg.mod:fn"`` workers run as ``procguard run pkg.mod:fn``: the
  function must live in a Python process anyway, and the runner gives it the
  in-process manager (limits, heartbeat, stop outcomes). Its settings reach
  it as a value through the worker's link (:mod:`.worker_link`), not as
  command-line text. It is the worker itself (no watchdog of its own under
  ``procguard up``: the supervisor's covers it). With a ``health_port`` the
  supervisor binds the port and answers it (:mod:`.healthports`) from the
  snapshots the worker publishes into a shared mapping the supervisor
  creates before each spawn and hands down (:mod:`.function_health`): no
  health responder process per worker (~14.5 MB each), and a worker that
  hangs reads 503 "no update from worker" as it would standalone.
- ``command = ...`` workers, with a ``health_port`` or not, are spawned
  directly and watched from outside by the supervisor (tree memory/CPU with
  :mod:`.procscan`, limits with :class:`procguard.policy.LimitTracker`,
  runtime, stop outcome). A runner process per command would cost a second
  Python interpreter (~23 MB RSS) per worker: for the 50-worker goal, 50
  times the supervisor's own budget. ``health_port`` means "procguard serves
  this worker's health on P" everywhere: here the supervisor binds the port
  itself and answers /health, /ready and /metrics for the command from its
  own samples (:mod:`.command_health`, :mod:`.healthports`), as ``procguard
  run -- COMMAND`` does in the files ``procguard deploy`` generates. With a
  ``drain_delay``, an operator's stop turns /ready 503 first and sends
  SIGTERM when the drain is over.

Either way the process leads its own session (``setsid``), carries the
marker ``PROCGUARD_INSTANCE=PROJECT.WORKER:NAMESPACE-RUNID`` (the namespace of
the stack's state directory, then the supervisor's run id and a random part)
and the labels ``PROCGUARD_STACK``/``PROCGUARD_WORKER``, holds its end of the
link, and gets SIGTERM if the supervisor dies (parent-death signal); the
watchdog kills its whole group, then whatever still carries a marker of that
run (a grandchild that left the group with ``setsid``).
The figures shown for a worker (status, page, metrics, history, limits) are
those of the worker's own process tree: procguard's helpers beside it (a
helper process the worker reports over its link) are never counted.
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import WorkerConfig
from ..copies import copy_environment, copy_name, copy_port
from ..health.shared import DEFAULT_SIZE, PublishedView, SnapshotReader, create_buffer
from ..instances.marker import new_marker
from ..instances.replace import BESIDE_ENV
from ..instances.spawn import spawn_process
from ..instances.statedir import STATE_DIR_ENV, namespace_of
from ..listen_fds import LISTEN_FD, listen_environment, with_listen_pid
from ..outcome import StopOutcome
from ..parent_link import HealthMapping
from ..policy import LimitTracker, runtime_deadline
from ..snapshot import label_environment
from .accounts import Account, resolve_account
from .backoff import Policy, Record
from .function_health import port_verdict, published_circuits
from .logs import WorkerOutput
from .procscan import TreeSample, TreeSampler
from .states import WorkerState, check_transition
from .worker_link import LINK_ENV, WorkerLink

logger = logging.getLogger(__name__)

#: How many memory/CPU samples each worker keeps for the chart.
SAMPLE_HISTORY = 150

_MB = 1024 * 1024


class Worker:
    """One copy of a ``[workers.NAME]`` under supervision (mutated only by the event loop).

    ``index`` is the copy's number (from 1) and ``count`` how many copies the
    worker had when this one was made (its ``PROCGUARD_INSTANCES``); its name
    and health port follow from them (:mod:`procguard.copies`). ``group`` is
    the worker's name in procguard.toml, shared by all its copies.
    """

    def __init__(
        self,
        config: WorkerConfig,
        *,
        project: str,
        base_dir: Path,
        procguard: list[str],
        output: WorkerOutput,
        state_dir: Path,
        run: str = "",
        index: int = 1,
        count: int = 1,
    ) -> None:
        self.group = config.name
        self.index = index
        self.count = count
        self.name = copy_name(config.name, index, plain_first=config.instances == 1)
        if index > 1:
            port = copy_port(config.limits.health_port, index)
            config = dataclasses.replace(config, limits=config.limits.with_changes(health_port=port))
        self.config = config
        self.project = project
        self.state_dir = state_dir
        self.namespace = namespace_of(state_dir)  # in every marker: the stack's processes are told apart
        self.run = run  # the supervisor's run id, in every marker: its watchdog finds them all
        self.base_dir = base_dir
        self.procguard = procguard
        self.output = output
        self.policy = Policy.from_worker(config)
        self.record = Record()
        self.state = WorkerState.STOPPED
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None
        self.marker: str | None = None
        self.link: WorkerLink | None = None
        #: A function worker's published snapshots (its health port's answers), per process.
        self.published: PublishedView | None = None
        self.generation = 0  # spawn counter: stale probe results are ignored
        self.restarts = 0
        #: Stops by reason token, counted by the supervisor: they survive every restart.
        self.stops_total: collections.Counter[str] = collections.Counter()
        self.started_at: float | None = None  # monotonic
        #: When the current process is recycled for max_runtime (less its jitter, drawn at each spawn).
        self.recycle_at: float | None = None
        self.started_wall: float | None = None
        self.want_start = False  # waiting for dependencies to run
        #: The autoscale rule with its latest reading (set by the autoscaler): status and the page.
        self.autoscale_shown: dict[str, Any] | None = None
        self.next_start_at: float | None = None  # BACKOFF: when to start again
        self.stop_deadline: float | None = None  # STOPPING: when to SIGKILL the group
        self.term_at: float | None = None  # STOPPING after a drain: when to send SIGTERM
        #: The stop the supervisor decided for the current process (None: it asked for none).
        self.asked: StopOutcome | None = None
        #: What the last signal an operator had sent (``procguard signal``) means should it end the process.
        self.signalled: StopOutcome | None = None
        self.killed_after_grace = False  # SIGKILLed at stop_deadline
        self.held_by_operator = False  # an operator asked for this process to stop: no restart after it
        self.restart_after_stop = False
        self.last_outcome: StopOutcome | None = None
        self.last_exit: dict[str, Any] | None = None
        self.peak_memory_bytes = 0
        self.last_sample: TreeSample | None = None
        self.last_sample_at: float | None = None  # monotonic time of last_sample
        self.next_sample_at: float | None = None  # when this worker is due for its next sample
        self.hard_killed = False  # SIGKILLed at the hard memory ceiling (once per process)
        self.samples: collections.deque[tuple[float, float, float]] = collections.deque(maxlen=SAMPLE_HISTORY)
        #: Unix times of this worker's recent starts: the chart breaks its lines there (no line
        #: drawn across the time the worker was down).
        self.run_starts: collections.deque[float] = collections.deque(maxlen=SAMPLE_HISTORY)
        self.sampler: TreeSampler | None = None
        self.tracker: LimitTracker | None = None
        #: CPU seconds of the worker's trees, over all its processes (a counter that never goes back).
        self.cpu_seconds_total = 0.0
        self._cpu_seen: float | None = None
        self.probe_failures = 0
        self.output_fd: int | None = None
        self.waiters: list[Callable[[Worker], None]] = []
        #: Settings read by a reload, taken on at the next spawn (the current process keeps its own).
        self.pending_config: WorkerConfig | None = None
        #: Removed from procguard.toml by a reload: dropped once its process is gone.
        self.retiring = False
        #: The worker's ``listen`` socket (the supervisor's, shared by every copy): fd 3 of each process.
        self.listen_fd: int | None = None
        #: A reload's new generation: the pid of the process it starts beside (it takes the second lock).
        self.beside_pid: int | None = None
        #: The copy's new generation while a reload waits for it to be ready (``status --json``).
        self.next_generation: Worker | None = None

    # -- facts ---------------------------------------------------------------

    @property
    def via_runner(self) -> bool:
        """True when the worker runs under ``procguard run`` (function mode); commands run directly."""
        return self.config.run is not None

    @property
    def holds_health_port(self) -> bool:
        """True with a health port: the supervisor binds it and answers on it, whatever the worker's kind."""
        return self.config.limits.health_port is not None

    @property
    def supervisor_serves_health(self) -> bool:
        """True for a command with a health port: its answers are built from the supervisor's own facts."""
        return self.config.run is None and self.config.limits.health_port is not None

    @property
    def publishes_health(self) -> bool:
        """True for a function with a health port: its answers are the snapshots it publishes."""
        return self.config.run is not None and self.config.limits.health_port is not None

    @property
    def supervised_from_outside(self) -> bool:
        """True for directly spawned commands: the supervisor enforces their limits itself."""
        return not self.via_runner

    @property
    def group_signals(self) -> bool:
        """Signal the whole group (direct commands) or the runner alone (it stops its own children)."""
        return not self.via_runner

    @property
    def stop_signum(self) -> int:
        """The signal a graceful stop sends: the command's ``stop_signal``; a runner always gets SIGTERM."""
        return signal.SIGTERM if self.via_runner else self.config.limits.stop_signal

    @property
    def instance_name(self) -> str:
        """The copy's instance name (locks, markers, cleanup): ``PROJECT.WORKER`` or ``PROJECT.WORKER:K``."""
        return f"{self.project}.{self.name}"

    def argv(self) -> list[str]:
        if self.config.run is not None:
            return [*self.procguard, "run", self.config.run, "--name", self.instance_name]
        assert self.config.command is not None
        command = [*self.config.command, *self.config.args]
        return command

    def environment(self, link_fd: int, account: Account | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        if account is not None:
            env.update(account.env)  # HOME, USER, LOGNAME of the worker's user (its env wins)
        env.update(self.config.env)
        env.update(label_environment(self.project, self.group))  # labels its series like everywhere else
        env.update(copy_environment(self.index, self.count))
        env[LINK_ENV] = str(link_fd)
        if self.beside_pid is not None:
            env[BESIDE_ENV] = str(self.beside_pid)
        # The stack's state directory reaches every process it starts, so a runner,
        # a ProcessManager in the worker and any nested procguard lock and mark in
        # the stack's namespace, never in some default directory (whatever env says).
        env[STATE_DIR_ENV] = str(self.state_dir)
        if self.via_runner:
            # The runner (and a function target) must import from the worker's directory.
            paths = [str(self.cwd())]
            if env.get("PYTHONPATH"):
                paths.append(env["PYTHONPATH"])
            env["PYTHONPATH"] = os.pathsep.join(paths)
        return env

    def cwd(self) -> Path:
        if self.config.cwd is None:
            return self.base_dir
        return (self.base_dir / self.config.cwd).resolve()

    def uptime(self, now: float) -> float | None:
        if self.started_at is None or not self.state.has_process:
            return None
        return max(0.0, now - self.started_at)

    def take_config(self, config: WorkerConfig) -> bool:
        """Use ``config`` from the next process on (no process may run); True when its health port
        must be bound again (port, address, token or kind of answers changed).

        The restart policy and its record start afresh: a worker that was FATAL
        with the old settings gets a fresh start limit with the new ones.
        """
        old = self.config
        self.config = config
        self.pending_config = None
        self.policy = Policy.from_worker(config)
        self.record = Record()
        return _port_identity(old) != _port_identity(config)

    # -- state ---------------------------------------------------------------

    def set_state(self, new: WorkerState) -> None:
        old = self.state
        self.state = check_transition(self.name, old, new)
        if old is not new:
            logger.debug("%s: %s -> %s", self.name, old, new)

    # -- process -------------------------------------------------------------

    def spawn(self, now: float, wall: float) -> int:
        """Start the process (caller has set STARTING); returns the pid. Raises OSError.

        With a ``listen`` socket the process gets it as fd 3, with ``LISTEN_FDS``/``LISTEN_FDNAMES``
        and, through :func:`~procguard.listen_fds.with_listen_pid`, its own pid as ``LISTEN_PID``.
        """
        account = resolve_account(self.config)  # before anything is opened: an unknown user fails the start
        read_fd, write_fd = os.pipe()
        self.marker = new_marker(self.instance_name, self.namespace, run=self.run)
        link = WorkerLink(self.config.limits)
        pass_fds = [link.child_fd]
        shared_fd, published = -1, None
        try:
            if self.publishes_health:
                # A fresh mapping per process: a new publisher's sequence never meets an old one.
                shared_fd, buffer = create_buffer(DEFAULT_SIZE)
                published = PublishedView(SnapshotReader(buffer))
                port = self.config.limits.health_port
                assert port is not None
                link.send_health_mapping(HealthMapping(shared_fd, DEFAULT_SIZE, port))
                pass_fds.append(shared_fd)
            argv, env = self.argv(), self.environment(link.child_fd, account)
            if self.listen_fd is not None:
                if LISTEN_FD in pass_fds:
                    raise OSError(errno.EBUSY, f"descriptor {LISTEN_FD} is taken by the worker's link")
                argv = with_listen_pid(argv)
                env.update(listen_environment(self.group))
            proc = spawn_process(
                argv,
                marker=self.marker,
                env=env,
                cwd=self.cwd(),
                stdout=write_fd,
                stderr=write_fd,
                parent_death_signal=signal.SIGTERM,
                pass_fds=tuple(pass_fds),
                stdin=subprocess.DEVNULL if self.listen_fd is None else self.listen_fd,  # -> fd 3
                **account.popen_kwargs(),
            )
        except BaseException as error:
            os.close(read_fd)
            link.close()
            if isinstance(error, PermissionError) and account.who:
                raise account.denied(error) from None
            raise
        finally:
            os.close(write_fd)
            if shared_fd >= 0:
                os.close(shared_fd)  # the worker has its copy; our mapping stays valid
        link.started()
        self.published = published
        os.set_blocking(read_fd, False)
        self.output_fd = read_fd
        self.link = link
        self.proc = proc
        self.pid = proc.pid
        self.generation += 1
        self.started_at = now
        self.started_wall = wall
        self.run_starts.append(round(wall, 1))
        limits = self.config.limits
        self.recycle_at = runtime_deadline(now, limits.max_runtime_s, limits.runtime_jitter_s)
        self.peak_memory_bytes = 0
        self.last_sample = None
        self.last_sample_at = None
        self.next_sample_at = None
        self.hard_killed = False
        self.killed_after_grace = False
        self.held_by_operator = False
        self.probe_failures = 0
        self.stop_deadline = None
        self.term_at = None
        self.asked = None
        self.signalled = None
        self._cpu_seen = None
        self.sampler = TreeSampler(proc.pid, cpu_window_s=self.config.limits.cpu_window_s)
        # The supervisor enforces the limits of the commands it runs directly; a
        # runner enforces its worker's own (the same WorkerLimits, handed over).
        outside = self.supervised_from_outside
        self.tracker = LimitTracker(self.config.limits, started_at=now) if outside else None
        self.output.note(f"started pid {proc.pid}: {shlex.join(self.argv())[:300]}")
        return proc.pid

    def read_link(self) -> bool:
        """Take what the worker reported: its helpers leave its figures, its real pid is sampled.

        False once every copy of the worker's end of the link is closed.
        """
        link = self.link
        if link is None:
            return False
        open_ = link.read()
        sampler = self.sampler
        if sampler is None:
            return open_
        if link.worker_pid is not None and sampler.root_pid != link.worker_pid:
            # procguard run reports its command: the command's tree is the worker's.
            window = self.config.limits.cpu_window_s
            sampler.close()
            self.sampler = sampler = TreeSampler(link.worker_pid, cpu_window_s=window)
            self._cpu_seen = None
        sampler.set_excluded(link.helpers)
        return open_

    def signal(self, signum: int, *, group: bool) -> None:
        """Send ``signum`` to the process (or its group); never to a pid we have reaped."""
        if self.pid is None or self.proc is None or self.proc.returncode is not None:
            return
        try:
            if group:
                os.killpg(self.pid, signum)
            else:
                os.kill(self.pid, signum)
        except ProcessLookupError:
            pass
        except PermissionError as error:
            logger.warning("%s: cannot signal pid %s: %s", self.name, self.pid, error)

    def exited(self, wait_status: int, now: float) -> tuple[int, float]:
        """Account for the reaped process; returns ``(returncode, runtime seconds)`` (-N: signal N).

        What the worker reported last (its outcome) stays in ``self.link`` until
        :meth:`forget_process`.
        """
        code = os.waitstatus_to_exitcode(wait_status)
        if self.proc is not None:
            self.proc.returncode = code  # we reaped it; keep Popen from trying
        if self.link is not None:
            self.link.read()  # written just before the exit: in the socket now
        runtime = 0.0 if self.started_at is None else max(0.0, now - self.started_at)
        return code, runtime

    def forget_process(self) -> None:
        """The process is gone and accounted for: drop what belonged to it."""
        if self.link is not None:
            self.link.close()
            self.link = None
        self.published = None  # not closed: the HTTP thread may be reading it (freed with its last reference)
        self.proc = None
        self.pid = None
        if self.sampler is not None:
            self.sampler.close()  # its files stay open between samples
        self.sampler = None
        self.tracker = None
        self.next_sample_at = None
        self.term_at = None
        self._cpu_seen = None

    def observe(
        self, sample: TreeSample, now: float, wall: float, *, chart: bool = True
    ) -> tuple[float, int] | None:
        """Keep ``sample`` (taken at ``now``); returns the previous one as ``(time, memory bytes)``.

        ``chart=False`` for the fast samples of a closely watched worker: they
        update the figures and the peak but do not crowd the chart's history.
        """
        previous = None
        if self.last_sample is not None and self.last_sample_at is not None:
            previous = (self.last_sample_at, self.last_sample.memory_bytes)
        self.last_sample = sample
        self.last_sample_at = now
        self.peak_memory_bytes = max(self.peak_memory_bytes, sample.memory_bytes)
        if self._cpu_seen is not None:
            self.cpu_seconds_total += max(0.0, sample.cpu_seconds - self._cpu_seen)
        self._cpu_seen = sample.cpu_seconds
        if chart:
            self.samples.append(
                (round(wall, 1), round(sample.memory_bytes / _MB, 1), round(sample.cpu_percent, 1))
            )
        return previous

    # -- reporting -----------------------------------------------------------

    def status(self, now: float) -> dict[str, Any]:
        """The ``status --json`` object of this worker."""
        sample = self.last_sample if self.state.has_process else None
        uptime = self.uptime(now)
        limits = self.config.limits
        return {
            "name": self.name,
            "worker": self.group,
            "copy": self.index,
            "state": self.state.value,
            "pid": self.pid,
            "restarts": self.restarts,
            "uptime_seconds": None if uptime is None else round(uptime, 1),
            "memory_mb": None if sample is None else round(sample.memory_bytes / _MB, 1),
            "cpu_percent": None if sample is None else round(sample.cpu_percent, 1),
            "peak_memory_mb": round(self.peak_memory_bytes / _MB, 1) if self.peak_memory_bytes else None,
            "last_exit": self.last_exit,
            "stops": dict(self.stops_total),
            "mode": self.config.mode,
            "runner": self.via_runner,
            "health_port": self.config.limits.health_port,
            "memory_limit_mb": (
                None if limits.memory_limit_bytes is None else round(limits.memory_limit_bytes / _MB, 1)
            ),
            "health": self._health_text(now),
            "circuits": published_circuits(self, now, time.time()),
            "autoscale": self._autoscale_status(),
            "next_start_in_seconds": (
                None if self.next_start_at is None else round(max(0.0, self.next_start_at - now), 1)
            ),
            "next_generation": self._next_generation_json(now),
        }

    def _autoscale_status(self) -> dict[str, Any] | None:
        """The rule and its latest reading (``value`` None until the first one); None without autoscale."""
        rule = self.config.autoscale
        if rule is None:
            return None
        shown = self.autoscale_shown
        if shown is not None and all(shown.get(key) == value for key, value in rule.to_json().items()):
            return shown
        return {**rule.to_json(), "value": None, "copies_read": 0, "copies_unknown": None, "wanted": None,
                "why": "no reading yet"}

    def _next_generation_json(self, now: float) -> dict[str, Any] | None:
        """The new process a reload is waiting for, beside this one (None: no reload under way)."""
        new = self.next_generation
        if new is None:
            return None
        uptime = new.uptime(now)
        return {"pid": new.pid, "state": new.state.value,
                "uptime_seconds": None if uptime is None else round(uptime, 1)}

    def _health_text(self, now: float) -> str | None:
        if self.config.limits.health_port is None or not self.state.has_process:
            return None
        return port_verdict(self, now, time.time())[1]  # what its port answers now (the supervisor serves it)


def port_rebound(old: WorkerConfig, new: WorkerConfig) -> bool:
    """True when ``new`` settings need the health port bound again (port, address, token, kind)."""
    return _port_identity(old) != _port_identity(new)


def _port_identity(config: WorkerConfig) -> tuple[object, ...]:
    """What a held health port is bound with and answers from: a change means binding it again."""
    from ..health.endpoints import TOKEN_ENV

    limits = config.limits
    return (limits.health_port, limits.health_host, config.run is None, config.env.get(TOKEN_ENV))


def last_exit_json(outcome: StopOutcome, *, wall: float, runtime_s: float) -> dict[str, Any]:
    """The ``last_exit`` object of ``status --json`` and the page: one outcome, rendered."""
    return {
        "status": outcome.exit_status,
        "signal": outcome.signal,
        "reason": outcome.reason.value,
        "detail": outcome.detail,
        "by": outcome.by.value,
        "time": wall,
        "runtime_seconds": round(runtime_s, 3),
        "explanation": outcome.explanation(),
        "status_text": outcome.status_words(),
    }


def default_procguard() -> list[str]:
    """How the supervisor invokes ``procguard run``: this very interpreter."""
    return [sys.executable, "-m", "procguard"]
