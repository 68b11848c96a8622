"""Pure rules of the supervisor: the state table and the restart decision (injected clock)."""

from __future__ import annotations

import pytest

from procguard.reasons import ExitStatus
from procguard.supervisor.backoff import Action, Exit, Policy, Record, backoff_delay, decide
from procguard.supervisor.states import TRANSITIONS, IllegalTransition, WorkerState, check_transition

S = WorkerState


def test_state_names_are_the_documented_ones() -> None:
    assert {s.value for s in WorkerState} == {"starting", "running", "backoff", "stopping", "stopped", "fatal"}
    assert set(TRANSITIONS) == set(WorkerState)


@pytest.mark.parametrize(
    ("old", "new"),
    [(S.STOPPED, S.RUNNING), (S.STOPPED, S.BACKOFF), (S.BACKOFF, S.RUNNING), (S.FATAL, S.RUNNING),
     (S.STOPPING, S.BACKOFF), (S.STOPPED, S.STOPPING)],
)
def test_illegal_transitions_raise(old: WorkerState, new: WorkerState) -> None:
    with pytest.raises(IllegalTransition, match=f"{old.value} -> {new.value}"):
        check_transition("api", old, new)


def test_legal_life_cycle() -> None:
    state = S.STOPPED
    for new in (S.STARTING, S.RUNNING, S.BACKOFF, S.STARTING, S.STOPPING, S.STOPPED, S.STARTING, S.FATAL,
                S.STARTING, S.RUNNING, S.STOPPING, S.STARTING):
        state = check_transition("api", state, new)
    assert state is S.STARTING
    assert S.STOPPING.has_process and not S.BACKOFF.has_process and not S.FATAL.has_process


POLICY = Policy(restart="always", initial_s=0.5, max_s=4.0, reset_s=60.0, start_limit=5, start_limit_interval_s=60)


def crash(runtime: float = 0.1, status: int = 1) -> Exit:
    return Exit(status=status, runtime_s=runtime)


def test_first_crash_restarts_at_once_then_backoff_doubles_up_to_the_cap() -> None:
    policy = Policy(initial_s=0.5, max_s=4.0, start_limit=100, start_limit_interval_s=1.0)
    record, now, delays = Record(), 0.0, []
    for _ in range(7):
        decision, record = decide(policy, record, crash(), now)
        assert decision.action is Action.RESTART and decision.counted
        delays.append(decision.delay_s)
        now += 10.0  # outside the start-limit window: only the backoff is at work
    assert delays == [0.0, 0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert backoff_delay(policy, 1000) == 4.0


def test_a_stable_run_resets_the_backoff() -> None:
    record = Record()
    for now in (0.0, 1.0, 2.0):
        decision, record = decide(POLICY, record, crash(), now)
    assert decision.delay_s == 1.0
    decision, record = decide(POLICY, record, crash(runtime=60.0), 100.0)
    assert decision.delay_s == 0.0 and record.consecutive_failures == 1


def test_start_limit_makes_the_worker_fatal() -> None:
    record, actions = Record(), []
    for i in range(5):
        decision, record = decide(POLICY, record, crash(), float(i))
        actions.append(decision.action)
    assert actions == [Action.RESTART] * 4 + [Action.FATAL]


def test_start_limit_counts_only_failures_inside_the_window() -> None:
    record = Record()
    for i in range(20):  # one crash every 20 s: never 5 within 60 s
        decision, record = decide(POLICY, record, crash(), i * 20.0)
        assert decision.action is Action.RESTART
    assert len(record.failure_times) <= 3


@pytest.mark.parametrize("status", [ExitStatus.MAX_RUNTIME, ExitStatus.MAX_ITERATIONS,
                                    ExitStatus.MEMORY_LIMIT, ExitStatus.CPU_LIMIT])
def test_planned_recycle_restarts_at_once_and_is_never_counted(status: int) -> None:
    record = Record()
    for i in range(50):
        decision, record = decide(POLICY, record, Exit(status=status, runtime_s=0.1), float(i))
        assert decision.action is Action.RESTART and decision.delay_s == 0 and not decision.counted
    assert record == Record()
    assert Exit(status=status).reason in {"max_runtime", "max_iterations", "memory_limit", "cpu_limit"}


def test_supervisor_enforced_limit_is_a_recycle_but_liveness_is_a_failure() -> None:
    decision, record = decide(POLICY, Record(), Exit(status=None, signal=15, cause="memory_limit", planned=True), 0)
    assert decision.action is Action.RESTART and not decision.counted and record == Record()
    decision, record = decide(POLICY, Record(), Exit(status=None, signal=15, cause="liveness"), 0)
    assert decision.counted and record.consecutive_failures == 1
    assert Exit(status=None, signal=15, cause="liveness").reason == "liveness"


def test_policies_on_failure_and_never() -> None:
    on_failure = Policy(restart="on-failure")
    assert decide(on_failure, Record(), Exit(status=0), 0)[0].action is Action.STOP
    assert decide(on_failure, Record(), Exit(status=2), 0)[0].action is Action.RESTART
    assert decide(on_failure, Record(), Exit(status=None, signal=9), 0)[0].action is Action.RESTART
    never = Policy(restart="never")
    assert decide(never, Record(), Exit(status=1), 0)[0].action is Action.STOP
    assert decide(never, Record(), Exit(status=ExitStatus.MAX_RUNTIME), 0)[0].action is Action.STOP
    always = Policy(restart="always")
    assert decide(always, Record(), Exit(status=0), 0)[0].action is Action.RESTART


def test_exit_reasons_read_like_words() -> None:
    assert Exit(status=1).reason == "exit 1"
    assert Exit(status=0).reason == "exited"
    assert Exit(status=None, signal=9).reason == "signal 9"
    assert Exit(status=143).reason == "signal"
    assert Exit(status=84).reason == "heartbeat_timeout"
