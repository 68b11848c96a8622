"""CircuitBreaker's transitions, driven by a fake clock: sync and async, decorator and context manager.

No process, no sleep: the clock is a number the test moves.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import threading

import pytest

from procguard import CircuitBreaker, CircuitOpenError, UsageError
from procguard.circuit import CircuitState, circuit_of


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Service:
    """A stand-in for the external service: fails while ``down``, counts the calls that reached it."""

    def __init__(self) -> None:
        self.down = False
        self.calls = 0

    def __call__(self, value: int = 1) -> int:
        self.calls += 1
        if self.down:
            raise ConnectionError("connection refused")
        return value

    async def acall(self, value: int = 1) -> int:
        await asyncio.sleep(0)
        return self(value)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _fail(breaker: CircuitBreaker, service: Service, times: int) -> None:
    for _ in range(times):
        with pytest.raises(ConnectionError):
            breaker.call(service)


# -- the transitions, through call() -------------------------------------------------------------


def test_closed_opens_at_the_threshold_of_failures_in_a_row(clock):
    breaker = CircuitBreaker("api", failure_threshold=3, reset_timeout=30, clock=clock)
    service = Service()
    service.down = True
    _fail(breaker, service, 2)
    assert breaker.state is CircuitState.CLOSED
    _fail(breaker, service, 1)
    assert breaker.state is CircuitState.OPEN
    assert service.calls == 3


def test_a_success_starts_the_count_over(clock):
    breaker = CircuitBreaker("api", failure_threshold=3, clock=clock)
    service = Service()
    service.down = True
    _fail(breaker, service, 2)
    service.down = False
    assert breaker.call(service, 7) == 7
    service.down = True
    _fail(breaker, service, 2)
    assert breaker.state is CircuitState.CLOSED
    assert breaker.snapshot().failures_in_a_row == 2


def test_open_rejects_without_calling_and_says_when_it_retries(clock):
    breaker = CircuitBreaker("api", failure_threshold=2, reset_timeout=30, clock=clock)
    service = Service()
    service.down = True
    _fail(breaker, service, 2)
    clock.advance(12)
    for _ in range(5):
        with pytest.raises(CircuitOpenError) as refused:
            breaker.call(service)
    assert service.calls == 2  # none of the five reached the service
    error = refused.value
    assert error.circuit == "api"
    assert error.retry_in_s == pytest.approx(18.0)
    assert error.failures == 2
    assert str(error) == (
        "circuit 'api' is open after 2 failures in a row (last: ConnectionError: connection refused); "
        "next trial call in 18.0 s"
    )
    snap = breaker.snapshot()
    assert (snap.state, snap.successes, snap.failures, snap.rejected) == ("open", 0, 2, 5)
    assert snap.retry_in_seconds == pytest.approx(18.0)


def test_open_becomes_half_open_after_reset_timeout_and_lets_one_trial_through(clock):
    breaker = CircuitBreaker("api", failure_threshold=1, reset_timeout=30, clock=clock)
    service = Service()
    service.down = True
    _fail(breaker, service, 1)
    clock.advance(29.9)
    with pytest.raises(CircuitOpenError):
        breaker.call(service)
    clock.advance(0.1)
    seen: list[CircuitState] = []

    def trial() -> str:
        seen.append(breaker.state)
        # A second caller while the trial runs is refused, without calling.
        with pytest.raises(CircuitOpenError) as second:
            breaker.call(service)
        assert second.value.retry_in_s == 0
        assert "a trial call is running" in str(second.value)
        return "ok"

    assert breaker.call(trial) == "ok"
    assert seen == [CircuitState.HALF_OPEN]
    assert service.calls == 1


def test_half_open_success_closes(clock):
    breaker = CircuitBreaker("api", failure_threshold=2, reset_timeout=5, clock=clock)
    service = Service()
    service.down = True
    _fail(breaker, service, 2)
    service.down = False
    clock.advance(5)
    assert breaker.call(service, 3) == 3
    assert breaker.state is CircuitState.CLOSED
    snap = breaker.snapshot()
    assert snap.failures_in_a_row == 0 and snap.retry_in_seconds is None
    # closed again means closed: failures count from zero up to the threshold
    service.down = True
    _fail(breaker, service, 1)
    assert breaker.state is CircuitState.CLOSED


def test_half_open_failure_opens_again_for_another_reset_timeout(clock):
    breaker = CircuitBreaker("api", failure_threshold=2, reset_timeout=10, clock=clock)
    service = Service()
    service.down = True
    _fail(breaker, service, 2)
    clock.advance(10)
    _fail(breaker, service, 1)  # the trial
    assert breaker.state is CircuitState.OPEN
    assert service.calls == 3
    clock.advance(9)
    with pytest.raises(CircuitOpenError) as refused:
        breaker.call(service)
    assert refused.value.retry_in_s == pytest.approx(1.0)
    clock.advance(1)
    service.down = False
    assert breaker.call(service) == 1
    assert breaker.state is CircuitState.CLOSED


def test_excluded_exceptions_are_not_failures(clock):
    breaker = CircuitBreaker("api", failure_threshold=1, exclude=(KeyError,), clock=clock)

    def not_found() -> None:
        raise KeyError("channel")

    for _ in range(3):
        with pytest.raises(KeyError):
            breaker.call(not_found)
    assert breaker.state is CircuitState.CLOSED
    snap = breaker.snapshot()
    assert (snap.successes, snap.failures) == (3, 0)


def test_an_excluded_exception_closes_a_half_open_circuit(clock):
    breaker = CircuitBreaker("api", failure_threshold=1, reset_timeout=1, exclude=(KeyError,), clock=clock)
    with pytest.raises(ConnectionError):
        breaker.call(_raise(ConnectionError("down")))
    clock.advance(1)
    with pytest.raises(KeyError):
        breaker.call(_raise(KeyError("gone")))  # the service answered: it is up
    assert breaker.state is CircuitState.CLOSED


def _raise(exc: BaseException):
    def raiser() -> None:
        raise exc

    return raiser


def test_a_cancelled_trial_is_no_verdict_and_frees_the_trial(clock):
    breaker = CircuitBreaker("api", failure_threshold=1, reset_timeout=1, clock=clock)
    with pytest.raises(ConnectionError):
        breaker.call(_raise(ConnectionError("down")))
    clock.advance(1)
    with pytest.raises(KeyboardInterrupt):
        breaker.call(_raise(KeyboardInterrupt()))
    assert breaker.state is CircuitState.HALF_OPEN
    assert breaker.call(lambda: 5) == 5  # the next call is the trial, not refused
    assert breaker.state is CircuitState.CLOSED
    snap = breaker.snapshot()
    assert (snap.successes, snap.failures, snap.rejected) == (1, 1, 0)


def test_a_slow_call_from_before_the_opening_does_not_close_it(clock):
    breaker = CircuitBreaker("api", failure_threshold=2, reset_timeout=10, clock=clock)
    service = Service()
    release = threading.Event()
    entered = threading.Event()
    result: list[int] = []

    def slow() -> int:
        entered.set()
        release.wait(10)
        return 1

    thread = threading.Thread(target=lambda: result.append(breaker.call(slow)))
    thread.start()
    assert entered.wait(10)
    service.down = True
    _fail(breaker, service, 2)
    assert breaker.state is CircuitState.OPEN
    release.set()
    thread.join(10)
    assert result == [1]
    assert breaker.state is CircuitState.OPEN  # only calls let in while open/half-open decide
    assert breaker.snapshot().successes == 1


# -- decorator and context manager, sync and async ---------------------------------------------


def test_decorator_sync(clock):
    breaker = CircuitBreaker("api", failure_threshold=2, reset_timeout=5, clock=clock)
    service = Service()

    @breaker
    def fetch(value: int) -> int:
        """Fetch a value."""
        return service(value)

    assert fetch.__name__ == "fetch" and fetch.__doc__ == "Fetch a value."
    assert fetch(4) == 4
    service.down = True
    for _ in range(2):
        with pytest.raises(ConnectionError):
            fetch(1)
    with pytest.raises(CircuitOpenError):
        fetch(1)
    assert service.calls == 3
    clock.advance(5)
    service.down = False
    assert fetch(9) == 9
    assert breaker.state is CircuitState.CLOSED


def test_decorator_async(clock):
    breaker = CircuitBreaker("api", failure_threshold=2, reset_timeout=5, clock=clock)
    service = Service()

    @breaker
    async def fetch(value: int) -> int:
        return await service.acall(value)

    assert asyncio.iscoroutinefunction(fetch)

    async def scenario() -> None:
        assert await fetch(4) == 4
        service.down = True
        for _ in range(2):
            with pytest.raises(ConnectionError):
                await fetch(1)
        assert breaker.state is CircuitState.OPEN
        with pytest.raises(CircuitOpenError):
            await fetch(1)
        assert service.calls == 3
        clock.advance(5)
        with pytest.raises(ConnectionError):
            await fetch(1)  # the trial fails
        assert breaker.state is CircuitState.OPEN
        clock.advance(5)
        service.down = False
        assert await fetch(2) == 2
        assert breaker.state is CircuitState.CLOSED

    asyncio.run(scenario())


def test_context_manager_sync(clock):
    breaker = CircuitBreaker("api", failure_threshold=2, reset_timeout=5, clock=clock)
    service = Service()
    with breaker:
        service()
    service.down = True
    for _ in range(2):
        with pytest.raises(ConnectionError), breaker:
            service()
    assert breaker.state is CircuitState.OPEN
    with pytest.raises(CircuitOpenError), breaker:
        service()
    assert service.calls == 3
    clock.advance(5)
    service.down = False
    with breaker:
        assert breaker.state is CircuitState.HALF_OPEN
        service()
    assert breaker.state is CircuitState.CLOSED
    snap = breaker.snapshot()
    assert (snap.successes, snap.failures, snap.rejected) == (2, 2, 1)


def test_context_manager_async_with_concurrent_tasks(clock):
    """Each task's ``async with`` settles its own entry: a trial and a refused call side by side."""
    breaker = CircuitBreaker("api", failure_threshold=1, reset_timeout=5, clock=clock)
    service = Service()

    async def guarded(gate: asyncio.Event) -> str:
        async with breaker:
            await gate.wait()
            return "done"

    async def scenario() -> None:
        service.down = True
        with pytest.raises(ConnectionError):
            async with breaker:
                await service.acall()
        clock.advance(5)
        gate = asyncio.Event()
        trial = asyncio.create_task(guarded(gate))
        await asyncio.sleep(0)
        assert breaker.state is CircuitState.HALF_OPEN
        with pytest.raises(CircuitOpenError):
            async with breaker:
                await service.acall()
        gate.set()
        assert await trial == "done"
        assert breaker.state is CircuitState.CLOSED

    asyncio.run(scenario())
    snap = breaker.snapshot()
    assert (snap.successes, snap.failures, snap.rejected) == (1, 1, 1)


# -- what the worker reads ---------------------------------------------------------------------


def test_each_state_change_is_one_log_line_and_a_listener_call(clock, caplog):
    breaker = CircuitBreaker("api", failure_threshold=2, reset_timeout=5, clock=clock)
    changes: list[tuple[str, str]] = []
    breaker.add_listener(lambda b, old, new: changes.append((old.value, new.value)))
    service = Service()
    service.down = True
    with caplog.at_level(logging.INFO, logger="procguard.circuit"):
        _fail(breaker, service, 2)
        for _ in range(3):
            with pytest.raises(CircuitOpenError):
                breaker.call(service)
        clock.advance(5)
        service.down = False
        breaker.call(service)
        breaker.call(service)
    assert changes == [("closed", "open"), ("open", "half-open"), ("half-open", "closed")]
    lines = [r.getMessage() for r in caplog.records if r.name == "procguard.circuit"]
    assert len(lines) == 3
    assert lines[0].startswith("circuit 'api' (pid ") and "open after 2 failures in a row" in lines[0]
    assert "connection refused" in lines[0] and "next trial call in 5s" in lines[0]
    assert "half-open" in lines[1] and "closed" in lines[2]


def test_counted_failures_and_refusals_name_their_circuit(clock):
    breaker = CircuitBreaker("api", failure_threshold=1, clock=clock)
    with pytest.raises(ConnectionError) as failed:
        breaker.call(_raise(ConnectionError("down")))
    assert circuit_of(failed.value) == "api"
    with pytest.raises(CircuitOpenError) as refused:
        breaker.call(_raise(ConnectionError("down")))
    assert circuit_of(refused.value) == "api"
    try:  # wrapped by the caller: still the circuit's
        try:
            raise failed.value
        except ConnectionError as inner:
            raise RuntimeError("iteration failed") from inner
    except RuntimeError as outer:
        assert circuit_of(outer) == "api"
    assert circuit_of(ValueError("unrelated")) is None


def test_circuit_open_error_survives_pickling():
    error = CircuitOpenError("api", 3.5, 4, "ConnectionError: down")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.circuit, copy.retry_in_s, copy.failures, copy.last_failure) == ("api", 3.5, 4, "ConnectionError: down")
    assert str(copy) == str(error)


def test_the_last_failure_is_one_bounded_line(clock):
    breaker = CircuitBreaker("api", failure_threshold=1, clock=clock)
    with pytest.raises(ValueError):
        breaker.call(_raise(ValueError("line one\nline two " + "x" * 500)))
    text = breaker.snapshot().last_failure
    assert "\n" not in text and len(text) == 200 and text.startswith("ValueError: line one line two")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": ""}, "circuit name: '' is not a name (use a non-empty string)"),
        ({"name": "api", "failure_threshold": 0},
         "circuit 'api': failure_threshold 0 is out of range (use 1 or more)"),
        ({"name": "api", "failure_threshold": True},
         "circuit 'api': failure_threshold True is out of range (use 1 or more)"),
        ({"name": "api", "reset_timeout": 0},
         "circuit 'api': reset_timeout 0 is out of range (use a positive duration)"),
        ({"name": "api", "reset_timeout": "soon"}, "circuit 'api': reset_timeout: 'soon' is not a duration"),
        ({"name": "api", "exclude": ("KeyError",)},
         "circuit 'api': exclude holds 'KeyError', not an exception type"),
    ],
)
def test_bad_settings_are_one_clear_line(kwargs, message):
    with pytest.raises(UsageError) as refused:
        CircuitBreaker(**kwargs)
    assert str(refused.value).startswith(message)


def test_reset_timeout_takes_units(clock):
    assert CircuitBreaker("api", reset_timeout="2m", clock=clock).reset_timeout_s == 120.0


def test_counts_are_exact_under_threads(clock):
    breaker = CircuitBreaker("api", failure_threshold=10**9, clock=clock)
    guarded = breaker(lambda: None)

    def hammer() -> None:
        for i in range(5000):
            if i % 10 == 0:
                with pytest.raises(ConnectionError):
                    breaker.call(_raise(ConnectionError("down")))
            else:
                guarded()

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    snap = breaker.snapshot()
    assert (snap.successes, snap.failures, snap.rejected) == (18000, 2000, 0)


def test_exit_without_enter_is_an_error(clock):
    breaker = CircuitBreaker("api", clock=clock)
    with pytest.raises(RuntimeError, match="without a matching __enter__"):
        breaker.__exit__(None, None, None)
