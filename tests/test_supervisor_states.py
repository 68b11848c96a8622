"""Pure rules of the supervisor: the state table and the restart decision (injected clock)."""

from __future__ import annotations

import pytest

from procguard.outcome import StopOutcome, outcome_of_exit
from procguard.reasons import Ender, ExitStatus, StopReason
from procguard.supervisor.backoff import Action, Policy, Record, backoff_delay, decide
from procguard.supervisor.states import TRANSITIONS, IllegalTransition, WorkerState, check_transition

S = WorkerState


def test_state_names_are_the_documented_ones() -> None:
    assert {s.value for s in WorkerState} == {"starting", "running", "backoff", "stopping", "stopped", "fatal"}
    assert set(TRANSITIONS) == set(WorkerState)


@pytest.mark.parametrize(
    ("old", "new"),
    [(S.STOPPED, S.RUNNING), (S.STOPPED, S.BACKOFF), (S.BACKOFF, S.RUNNING), (S.FATAL, S.RUNNING),
     (S.STOPPING, S.RUNNING), (S.STOPPED, S.STOPPING)],
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


def exit_(returncode: int, **asked: object) -> StopOutcome:
    """The outcome of a process that exited with ``returncode`` (-N: signal N), nothing reported."""
    return outcome_of_exit(returncode, **asked)  # type: ignore[arg-type]


def run(policy: Policy, record: Record, outcome: StopOutcome, now: float, runtime: float = 0.1):
    return decide(policy, record, outcome, runtime, now)


CRASH = exit_(1)


def test_first_crash_restarts_at_once_then_backoff_doubles_up_to_the_cap() -> None:
    policy = Policy(initial_s=0.5, max_s=4.0, start_limit=100, start_limit_interval_s=1.0)
    record, now, delays = Record(), 0.0, []
    for _ in range(7):
        decision, record = run(policy, record, CRASH, now)
        assert decision.action is Action.RESTART and decision.counted
        delays.append(decision.delay_s)
        now += 10.0  # outside the start-limit window: only the backoff is at work
    assert delays == [0.0, 0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert backoff_delay(policy, 1000) == 4.0


def test_a_stable_run_resets_the_backoff() -> None:
    record = Record()
    for now in (0.0, 1.0, 2.0):
        decision, record = run(POLICY, record, CRASH, now)
    assert decision.delay_s == 1.0
    decision, record = run(POLICY, record, CRASH, 100.0, runtime=60.0)
    assert decision.delay_s == 0.0 and record.consecutive_failures == 1


def test_start_limit_makes_the_worker_fatal() -> None:
    record, actions = Record(), []
    for i in range(5):
        decision, record = run(POLICY, record, CRASH, float(i))
        actions.append(decision.action)
    assert actions == [Action.RESTART] * 4 + [Action.FATAL]


def test_start_limit_counts_only_failures_inside_the_window() -> None:
    record = Record()
    for i in range(20):  # one crash every 20 s: never 5 within 60 s
        decision, record = run(POLICY, record, CRASH, i * 20.0)
        assert decision.action is Action.RESTART
    assert len(record.failure_times) <= 3


@pytest.mark.parametrize("status", [ExitStatus.MAX_RUNTIME, ExitStatus.MAX_ITERATIONS,
                                    ExitStatus.MEMORY_LIMIT, ExitStatus.CPU_LIMIT])
def test_planned_recycle_restarts_at_once_and_is_never_counted(status: int) -> None:
    record = Record()
    outcome = exit_(status)
    assert outcome.reason.value in {"max_runtime", "max_iterations", "memory_limit", "cpu_limit"}
    for i in range(50):
        decision, record = run(POLICY, record, outcome, float(i))
        assert decision.action is Action.RESTART and decision.delay_s == 0 and not decision.counted
    assert record == Record()


def test_supervisor_enforced_limit_is_a_recycle_but_liveness_and_the_hard_ceiling_are_failures() -> None:
    asked = StopOutcome.decided(StopReason.MEMORY_LIMIT, "over", by=Ender.PROCGUARD)
    decision, record = run(POLICY, Record(), exit_(-15, asked=asked), 0)
    assert decision.action is Action.RESTART and not decision.counted and record == Record()
    for reason in (StopReason.LIVENESS, StopReason.HARD_MEMORY_LIMIT):
        asked = StopOutcome.decided(reason, "x", by=Ender.PROCGUARD)
        outcome = exit_(-9 if reason is StopReason.HARD_MEMORY_LIMIT else -15, asked=asked)
        assert outcome.reason is reason
        decision, record = run(POLICY, Record(), outcome, 0)
        assert decision.counted and record.consecutive_failures == 1


def test_policies_on_failure_and_never() -> None:
    on_failure = Policy(restart="on-failure")
    assert run(on_failure, Record(), exit_(0), 0)[0].action is Action.STOP
    assert run(on_failure, Record(), exit_(2), 0)[0].action is Action.RESTART
    assert run(on_failure, Record(), exit_(-9), 0)[0].action is Action.RESTART
    never = Policy(restart="never")
    assert run(never, Record(), exit_(1), 0)[0].action is Action.STOP
    assert run(never, Record(), exit_(ExitStatus.MAX_RUNTIME), 0)[0].action is Action.STOP
    always = Policy(restart="always")
    assert run(always, Record(), exit_(0), 0)[0].action is Action.RESTART


def test_exits_read_as_reason_tokens() -> None:
    """With nothing asked and nothing reported, how a process ended is the outcome (section 8 tokens)."""
    assert exit_(1).reason is StopReason.CRASHED and exit_(1).detail == "exited with status 1"
    assert exit_(0).reason is StopReason.COMPLETED
    killed = exit_(-9)
    assert killed.reason is StopReason.KILLED and killed.by is Ender.OUTSIDE
    assert "SIGKILL" in killed.detail and "OOM" in killed.detail and killed.status_code == 137
    assert exit_(-15).reason is StopReason.EXTERNAL_SIGNAL and exit_(-15).signal == 15
    assert exit_(143).reason is StopReason.EXTERNAL_SIGNAL  # a program that handles SIGTERM, exits 143
    assert exit_(84).reason is StopReason.HEARTBEAT_TIMEOUT
    assert exit_(86).reason is StopReason.HARD_MEMORY_LIMIT
