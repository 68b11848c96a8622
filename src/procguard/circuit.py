"""CircuitBreaker: stop calling a service that keeps failing, and say so on the worker's surfaces.

Example::

    from procguard import CircuitBreaker, CircuitOpenError, ProcessManager

    manager = ProcessManager(name="collector", health_port=9091)
    api = manager.circuit("api", failure_threshold=5, reset_timeout="30s")

    @api                                   # or: with api: ... / async with api: ...
    def fetch(url): ...

    while manager.should_continue():
        try:
            fetch(URL)
        except CircuitOpenError as refused:   # not called: the api failed 5 times in a row
            log.info("%s", refused)           # "circuit 'api' is open ...; next trial call in 12.0 s"
        manager.sleep(60)

The three states:

- **closed**: calls go through; ``failure_threshold`` failures in a row
  open the circuit (a success starts the count over).
- **open**: calls are refused at once with :class:`CircuitOpenError`,
  without calling, until ``reset_timeout`` has passed since it opened.
- **half-open**: the first call after that is a trial; calls made while
  the trial runs are refused. The trial's success closes the circuit, its
  failure opens it again for another ``reset_timeout``.

A failure is an :class:`Exception` raised by the guarded call, unless its
type is in ``exclude`` (the service answered, e.g. "not found": that counts
as a success). ``KeyboardInterrupt``, ``asyncio.CancelledError`` and the like
are neither: they say nothing about the service. Only calls let through in
the current state decide the next one: a slow call that began before the
circuit opened cannot close it when it ends.

What the worker shows (:meth:`ProcessManager.circuit
<procguard.manager.ProcessManager.circuit>` registers a breaker): /health
stays 200 (the process is alive; restarting it would not bring the service
back) with a reason naming the open circuit; /ready answers 503 while a
circuit created with ``required=True`` is not closed; /metrics has
``procguard_circuit_state`` (0 closed, 1 half-open, 2 open) and
``procguard_circuit_calls_total{result="success|failure|rejected"}``. Each
state change is one log line. A failure counted by a circuit (or a refusal)
does not count towards the worker's ``max_consecutive_failures``: the
circuit already holds that signal, and a restart would not fix the service.

Why procguard has its own breaker rather than wrapping a library: we read
pybreaker 1.4.1, circuitbreaker 2.1.3, aiobreaker 1.2.0 and purgatory 3.0.1.
None takes a clock (pybreaker reads ``datetime.now(UTC)``, purgatory
``time.time()``, circuitbreaker a module-level ``monotonic``), so a test of
"open until the timeout" would have to patch time globally, and the wall
clock ones move with NTP steps. pybreaker, the best maintained with a
listener hook, has asyncio only through tornado and holds one lock around
the guarded call itself, so concurrent callers wait for each other (three
0.3 s calls from three threads take 0.9 s). circuitbreaker has no listener
hook, keeps every breaker in a class-level registry and lets every call
through once the timeout passed; aiobreaker is asyncio only and unreleased
since 2021; purgatory lets every call through in half-open too, does not
report refused calls to its hook, and goes through a unit of work and a
message bus on every call. What procguard needs (an injected clock, the
three counts with refusals, one trial at a time, sync and async, no lock
held while the service is called) is about as long to write as to adapt.
``bench/bench_circuit.py`` measures the closed-state cost beside a bare call
and beside those libraries.
"""

from __future__ import annotations

import enum
import functools
import inspect
import itertools
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from contextvars import ContextVar
from types import TracebackType
from typing import Any, TypeVar, cast

from .errors import ProcguardError, UsageError, shown
from .snapshot import CircuitSnapshot

log = logging.getLogger(__name__)

__all__ = ["CircuitBreaker", "CircuitOpenError", "CircuitState", "circuit_of"]

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

#: The longest text of the last failure a circuit keeps (for /health's reason and the log).
LAST_FAILURE_MAX = 200

#: The attribute a failure counted by a circuit carries: the circuit's name.
_COUNTED_BY = "procguard_circuit"


class CircuitState(enum.Enum):
    """A circuit's state; ``value`` is the token shown on /metrics and the status page
    (``procguard.snapshot.CIRCUIT_STATE_VALUES`` gives each its gauge value)."""

    CLOSED = "closed"
    HALF_OPEN = "half-open"
    OPEN = "open"

#: A state change: (circuit, old state, new state). Called after the change, outside the lock.
Listener = Callable[["CircuitBreaker", CircuitState, CircuitState], object]


class CircuitOpenError(ProcguardError):
    """A call refused without calling: the circuit is open (or its trial call is running).

    Fields: ``circuit`` (name), ``retry_in_s`` (seconds until a trial call
    is let through; 0 while a trial runs), ``failures`` (the failures in a
    row that opened it), ``last_failure`` (its text).
    """

    def __init__(self, circuit: str, retry_in_s: float, failures: int, last_failure: str) -> None:
        self.circuit = circuit
        self.retry_in_s = retry_in_s
        self.failures = failures
        self.last_failure = last_failure
        when = f"next trial call in {retry_in_s:.1f} s" if retry_in_s > 0 else "a trial call is running"
        last = f" (last: {last_failure})" if last_failure else ""
        super().__init__(
            f"circuit {shown(circuit)} is open after {failures} failures in a row{last}; {when}"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.circuit, self.retry_in_s, self.failures, self.last_failure))


def circuit_of(exc: BaseException | None) -> str | None:
    """The circuit that counted ``exc`` (or one in its cause/context chain) or refused the call; else None."""
    seen = 0
    while exc is not None and seen < 16:
        if isinstance(exc, CircuitOpenError):
            return exc.circuit
        name = getattr(exc, _COUNTED_BY, None)
        if isinstance(name, str):
            return name
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


class CircuitBreaker:
    """Closed / open / half-open around calls to one external service.

    ``name`` names the circuit everywhere (log, /health, ``circuit`` label).
    ``failure_threshold`` [5] failures in a row open it; ``reset_timeout``
    [30 s; a number of seconds or ``"30s"``, ``"2m"``] is how long it stays
    open before a trial call; ``exclude`` exception types do not count as
    failures; ``required`` [False] makes /ready answer 503 while the circuit
    is not closed (traffic is pointless without the service); ``clock``
    [``time.monotonic``] is read for every timing decision (tests pass a
    fake one). Thread-safe and usable from asyncio: a call through a closed
    circuit that succeeds takes no lock; a failure, a refusal or a state
    change takes one briefly; none is held while the service is called.

    Use it as a decorator (sync or ``async def``), as ``with breaker:`` /
    ``async with breaker:``, or through :meth:`call` / :meth:`call_async`.
    """

    def __init__(
        self,
        name: str,
        failure_threshold: int = 5,
        reset_timeout: float | str = 30.0,
        *,
        exclude: Iterable[type[BaseException]] = (),
        required: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from .units import parse_duration

        if not isinstance(name, str) or not name.strip():
            msg = f"circuit name: {shown(name)} is not a name (use a non-empty string)"
            raise UsageError(msg)
        label = f"circuit {shown(name)}"
        threshold_ok = isinstance(failure_threshold, int) and not isinstance(failure_threshold, bool)
        if not threshold_ok or failure_threshold < 1:
            msg = f"{label}: failure_threshold {shown(failure_threshold)} is out of range (use 1 or more)"
            raise UsageError(msg)
        timeout = parse_duration(reset_timeout, what=f"{label}: reset_timeout")
        if timeout <= 0:
            msg = f"{label}: reset_timeout {shown(reset_timeout)} is out of range (use a positive duration)"
            raise UsageError(msg)
        excluded = tuple(exclude)
        for kind in excluded:
            if not (isinstance(kind, type) and issubclass(kind, BaseException)):
                msg = f"{label}: exclude holds {shown(kind)}, not an exception type"
                raise UsageError(msg)
        if not callable(clock):
            msg = f"{label}: clock {shown(clock)} is not callable (use e.g. time.monotonic)"
            raise UsageError(msg)
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = timeout
        self.exclude = excluded
        self.required = bool(required)
        self._clock = clock
        self._lock = threading.Lock()
        self._state = CircuitState.CLOSED
        self._generation = 0  # bumped at each state change
        self._in_a_row = 0  # failures in a row (closed), or those that opened it
        self._opened_at = 0.0
        self._trial_running = False
        # Successes are the common case: counted without the lock. ``next()`` on an itertools.count is
        # one C call under the GIL (the standard library's threading module numbers threads this way).
        self._successes = itertools.count()
        self._failures = 0
        self._rejected = 0
        self._last_failure = ""
        self._listeners: list[Listener] = []
        # The ``with breaker:`` blocks this thread or task is inside: (generation let in under, trial).
        # Tuples, never mutated: each asyncio task works on its own copy of the context.
        self._entered: ContextVar[tuple[tuple[int, bool], ...]] = ContextVar(f"circuit {name}", default=())

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.name!r} {self._state.value} failures in a row={self._in_a_row}>"

    # ----------------------------------------------------------------- reading

    @property
    def state(self) -> CircuitState:
        """The current state (open stays open until the next call after ``reset_timeout`` tries)."""
        return self._state

    def snapshot(self) -> CircuitSnapshot:
        """The state and counts as one value, for the worker's snapshot."""
        with self._lock:
            state = self._state
            retry_in = None
            if state is CircuitState.OPEN:
                retry_in = max(0.0, self._opened_at + self.reset_timeout_s - self._clock())
            return CircuitSnapshot(
                name=self.name,
                state=state.value,
                required=self.required,
                successes=_current(self._successes),
                failures=self._failures,
                rejected=self._rejected,
                failures_in_a_row=self._in_a_row,
                retry_in_seconds=retry_in,
                last_failure=self._last_failure,
            )

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(breaker, old, new)`` after each state change (outside the lock; errors logged)."""
        self._listeners.append(listener)

    # ------------------------------------------------------------- the calls

    def _admit(self) -> tuple[int, bool]:
        """Let a call in: ``(generation, is_trial)``; CircuitOpenError when it is refused.

        The callers read ``_generation`` then ``_state`` themselves first, without the lock, and
        come here only when the circuit is not closed: a change between the two reads leaves them
        with an old generation, and :meth:`_settle` ignores a call of an old generation.
        """
        change = None
        refused: CircuitOpenError | None = None
        with self._lock:
            state = self._state
            now = self._clock()
            if state is CircuitState.CLOSED:
                return self._generation, False
            if state is CircuitState.OPEN and now >= self._opened_at + self.reset_timeout_s:
                change = self._move(CircuitState.HALF_OPEN, now)
            generation = self._generation
            if self._state is CircuitState.HALF_OPEN and not self._trial_running:
                self._trial_running = True
            else:
                self._rejected += 1
                retry_in = 0.0
                if state is CircuitState.OPEN:
                    retry_in = max(0.0, self._opened_at + self.reset_timeout_s - now)
                refused = CircuitOpenError(self.name, retry_in, self._in_a_row, self._last_failure)
        if change is not None:
            self._announce(*change)
        if refused is not None:
            raise refused
        return generation, True

    def _settle(self, generation: int, trial: bool, exc: BaseException | None) -> None:
        """Account for a call let in under ``generation`` that ended with ``exc`` (None: success)."""
        change = None
        if exc is None or isinstance(exc, self.exclude):
            next(self._successes)
            if self._in_a_row == 0 and self._state is CircuitState.CLOSED:
                return  # the common case: nothing to change
            with self._lock:
                if generation == self._generation and self._state is not CircuitState.OPEN:
                    self._in_a_row = 0
                    if self._state is CircuitState.HALF_OPEN:
                        change = self._move(CircuitState.CLOSED, self._clock())
        elif isinstance(exc, Exception):
            text = _failure_text(exc)
            try:
                setattr(exc, _COUNTED_BY, self.name)  # the worker's failure count leaves it to us
            except (AttributeError, TypeError):  # an exception type with __slots__: the count stays
                pass
            with self._lock:
                self._failures += 1
                self._last_failure = text
                if generation == self._generation:
                    if self._state is CircuitState.CLOSED:
                        self._in_a_row += 1
                        if self._in_a_row >= self.failure_threshold:
                            change = self._move(CircuitState.OPEN, self._clock())
                    elif self._state is CircuitState.HALF_OPEN:
                        change = self._move(CircuitState.OPEN, self._clock())
        elif trial:  # cancelled or interrupted: no verdict on the service; the next call is the trial
            with self._lock:
                if generation == self._generation:
                    self._trial_running = False
        if change is not None:
            self._announce(*change)

    def _move(self, new: CircuitState, now: float) -> tuple[CircuitState, CircuitState]:
        """Change state (the lock is held); the caller announces the change once the lock is released."""
        old = self._state
        self._state = new
        self._generation += 1
        self._trial_running = False
        if new is CircuitState.OPEN:
            self._opened_at = now
        elif new is CircuitState.CLOSED:
            self._in_a_row = 0
        return old, new

    def _announce(self, old: CircuitState, new: CircuitState) -> None:
        if new is CircuitState.OPEN:
            log.warning(
                "circuit %r (pid %d) open after %d failures in a row (last: %s); next trial call in %gs",
                self.name, os.getpid(), self._in_a_row, self._last_failure, self.reset_timeout_s,
            )
        elif new is CircuitState.HALF_OPEN:
            log.info("circuit %r (pid %d) half-open: trial call", self.name, os.getpid())
        else:
            log.info("circuit %r (pid %d) closed: the trial call succeeded", self.name, os.getpid())
        for listener in list(self._listeners):
            try:
                listener(self, old, new)
            except Exception:
                log.warning("circuit %r: listener %r failed", self.name, listener, exc_info=True)

    def call(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``func(*args, **kwargs)`` through the circuit; CircuitOpenError when refused."""
        generation, trial = self._generation, False
        if self._state is not CircuitState.CLOSED:
            generation, trial = self._admit()
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:
            self._settle(generation, trial, exc)
            raise
        self._settle(generation, trial, None)
        return result

    async def call_async(self, func: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """``await func(*args, **kwargs)`` through the circuit; CircuitOpenError when refused."""
        generation, trial = self._generation, False
        if self._state is not CircuitState.CLOSED:
            generation, trial = self._admit()
        try:
            result = await func(*args, **kwargs)
        except BaseException as exc:
            self._settle(generation, trial, exc)
            raise
        self._settle(generation, trial, None)
        return result

    def __call__(self, func: F) -> F:
        """Decorate ``func`` (sync or ``async def``): each call goes through the circuit."""
        closed, admit, settle = CircuitState.CLOSED, self._admit, self._settle
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def guarded_async(*args: Any, **kwargs: Any) -> Any:
                generation, trial = self._generation, False
                if self._state is not closed:
                    generation, trial = admit()
                try:
                    result = await func(*args, **kwargs)
                except BaseException as exc:
                    settle(generation, trial, exc)
                    raise
                settle(generation, trial, None)
                return result

            return cast(F, guarded_async)

        @functools.wraps(func)
        def guarded(*args: Any, **kwargs: Any) -> Any:  # call(), inlined: this is every guarded call
            generation, trial = self._generation, False
            if self._state is not closed:
                generation, trial = admit()
            try:
                result = func(*args, **kwargs)
            except BaseException as exc:
                settle(generation, trial, exc)
                raise
            settle(generation, trial, None)
            return result

        return cast(F, guarded)

    def __enter__(self) -> CircuitBreaker:
        generation, trial = self._generation, False
        if self._state is not CircuitState.CLOSED:
            generation, trial = self._admit()
        entered = self._entered
        entered.set((*entered.get(), (generation, trial)))
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        entered = self._entered
        stack = entered.get()
        if not stack:
            msg = f"circuit {self.name!r}: __exit__ without a matching __enter__ in this thread or task"
            raise RuntimeError(msg)
        entered.set(stack[:-1])
        generation, trial = stack[-1]
        self._settle(generation, trial, exc)

    async def __aenter__(self) -> CircuitBreaker:
        return self.__enter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(exc_type, exc, tb)


def _current(counter: itertools.count[int]) -> int:
    """The value an itertools.count would give next (its repr is ``count(N)``), read without advancing it."""
    return int(repr(counter)[6:-1])


def _failure_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    text = " ".join(text.split())  # one line
    return text if len(text) <= LAST_FAILURE_MAX else text[: LAST_FAILURE_MAX - 1] + "…"
