"""Liveness probing of the function workers with a health port, from a side thread.

Only function workers (``run =``) are probed: their health is decided inside
the worker, so a worker that hangs stops publishing and its port turns 503
"no update from worker". Their port is the supervisor's own
(:mod:`.healthports`), so the probe does not go through HTTP: it reads the
verdict the port would answer, from the same published snapshot
(:func:`.function_health.port_verdict`), in microseconds. A target
without such a check (``check=None``) is asked ``GET /health`` over HTTP
(:func:`probe_health`). A command worker's port is answered from the
supervisor's own facts: probing it would ask the supervisor about itself.

The prober thread only asks and reports: every ``probe_period_s`` it probes
each target that has been up for ``probe_delay_s``, puts a
:class:`ProbeResult` on a queue and wakes the event loop. What a failure
means (count it, restart after ``probe_failure_threshold`` in a row) is
decided by the loop (:meth:`.lifecycle.Lifecycle.probe_result`), which owns
every worker's state. A result carries the worker's spawn ``generation`` so
an answer about a process that has since been replaced is ignored.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator

from .settings import Settings
from .worker import Worker


class ProbeTarget:
    """Where to probe one worker, and which spawn of it (plain slots: the supervisor counts its bytes)."""

    __slots__ = ("check", "generation", "host", "port", "started_at")

    def __init__(
        self,
        host: str,
        port: int,
        generation: int,
        started_at: float,
        check: Callable[[], tuple[bool, str]] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.generation = generation
        self.started_at = started_at  # monotonic
        self.check = check  # the verdict read directly (no HTTP), or None: probe host:port


class ProbeResult:
    """One probe's outcome, for the worker ``name`` as spawned the ``generation``-th time."""

    __slots__ = ("detail", "generation", "name", "ok")

    def __init__(self, name: str, generation: int, ok: bool, detail: str) -> None:
        self.name = name
        self.generation = generation
        self.ok = ok
        self.detail = detail


def probe_targets(
    workers: Iterable[Worker], *, wall_clock: Callable[[], float] = time.time
) -> dict[str, ProbeTarget]:
    """The function workers to probe now: a health port and a live process."""
    from .function_health import port_verdict

    targets: dict[str, ProbeTarget] = {}
    for worker in workers:
        port = worker.config.limits.health_port
        if not worker.publishes_health or port is None:
            continue
        if worker.state.has_process and worker.started_at is not None:
            targets[worker.name] = ProbeTarget(
                worker.config.limits.health_host,
                port,
                worker.generation,
                worker.started_at,
                check=_verdict_of(worker, port_verdict, wall_clock),
            )
    return targets


def _verdict_of(
    worker: Worker,
    verdict: Callable[[Worker, float, float], tuple[bool, str]],
    wall_clock: Callable[[], float],
) -> Callable[[], tuple[bool, str]]:
    return lambda: verdict(worker, time.monotonic(), wall_clock())


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


class Prober:
    """The side thread that probes; the loop sets its targets and drains its results.

    ``wake`` is called after each round so the loop picks the results up at
    once; ``probe`` is the check itself (:func:`probe_health`, or a stand-in).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        wake: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
        probe: Callable[[str, int, float], tuple[bool, str]] = probe_health,
    ) -> None:
        self._settings = settings
        self._wake = wake
        self._clock = clock
        self._probe = probe
        self._targets: dict[str, ProbeTarget] = {}
        self._results: queue.SimpleQueue[ProbeResult] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def set_targets(self, targets: dict[str, ProbeTarget]) -> None:
        """Replace the target list (one attribute swap: the thread reads a consistent dict)."""
        self._targets = targets

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="procguard-prober", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        settings = self._settings
        while not self._stop.wait(settings.probe_period_s):
            now = self._clock()
            for name, target in list(self._targets.items()):
                if now - target.started_at < settings.probe_delay_s or self._stop.is_set():
                    continue
                if target.check is not None:
                    ok, detail = target.check()
                else:
                    ok, detail = self._probe(target.host, target.port, settings.probe_timeout_s)
                self._results.put(ProbeResult(name, target.generation, ok, detail))
            self._wake()

    def results(self) -> Iterator[ProbeResult]:
        """The results reported since the last call, oldest first."""
        while True:
            try:
                yield self._results.get_nowait()
            except queue.Empty:
                return

    def stop(self) -> None:
        """Ask the thread to finish (it ends after the probe in flight, if any)."""
        self._stop.set()

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join(timeout=self._settings.probe_timeout_s + 1)
