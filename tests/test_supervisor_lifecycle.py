"""The supervisor's transitions without processes: timers, dependencies, stop order, probe verdicts.

Workers are built from a real procguard.toml but never spawned; their state
is set by hand and the parts under test act on it (supervisor's
test_process.py style: set the state, call, look at the new state).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from procguard.config import load_config
from procguard.reasons import Ender, StopReason
from procguard.supervisor.history import History, read_events
from procguard.supervisor.leftovers import LeftoverGroups
from procguard.supervisor.lifecycle import Lifecycle, deps_ready, next_deadline, operator_stop
from procguard.supervisor.logs import RotatingFile, WorkerOutput
from procguard.supervisor.probe import ProbeResult, probe_targets
from procguard.supervisor.settings import Settings
from procguard.supervisor.shutdown import StopAll, dependents_running
from procguard.supervisor.states import WorkerState
from procguard.supervisor.watchdog import WatchdogLink
from procguard.supervisor.worker import Worker

from .supervisor_workers.stackkit import write_config

S = WorkerState


@pytest.fixture
def workers(tmp_path: Path) -> dict[str, Worker]:
    config = load_config(write_config(tmp_path, {
        "db": {"command": ["true"]},
        "api": {"command": ["true"], "depends_on": ["db"], "health_port": 9999},
        "bot": {"command": ["true"], "depends_on": ["api"]},
    }))
    built = {}
    for name, worker_config in config.workers.items():
        output = WorkerOutput(name, RotatingFile(tmp_path / f"{name}.log", max_bytes=0, backups=0),
                              terminal=None, width=3)
        built[name] = Worker(worker_config, project="p", base_dir=tmp_path, procguard=["procguard"], output=output,
                             state_dir=tmp_path / "state")
    return built


@pytest.fixture
def lifecycle(tmp_path: Path) -> Any:
    history = History(tmp_path / "history.sqlite")
    watchdog = WatchdogLink(enabled=False)
    changed: list[int] = []
    life = Lifecycle(project="p", settings=Settings(probe_failure_threshold=2), history=history,
                     leftovers=LeftoverGroups(grace_s=1.0, watchdog=watchdog), watchdog=watchdog,
                     on_spawned=lambda w: None, on_changed=lambda: changed.append(1),
                     clock=lambda: 100.0, wall_clock=lambda: 1000.0)
    yield life
    history.close()


def _running(worker: Worker, pid: int, started_at: float = 50.0) -> None:
    """A worker as if it had been spawned (no process: signals to it are no-ops)."""
    worker.state, worker.pid, worker.started_at, worker.generation = S.RUNNING, pid, started_at, 1


def test_next_deadline_follows_the_state(workers: dict[str, Worker]) -> None:
    db = workers["db"]
    assert next_deadline(db, 1.0) is None
    db.state, db.started_at = S.STARTING, 10.0
    assert next_deadline(db, 1.0) == 11.0
    db.state, db.next_start_at = S.BACKOFF, 42.0
    assert next_deadline(db, 1.0) == 42.0
    db.state, db.stop_deadline = S.STOPPING, 7.0
    assert next_deadline(db, 1.0) == 7.0


def test_a_worker_waits_for_what_it_depends_on_unless_that_is_not_coming(workers: dict[str, Worker]) -> None:
    api, db = workers["api"], workers["db"]
    db.want_start = True
    assert not deps_ready(api, workers)  # db is coming
    db.state = S.STARTING
    assert not deps_ready(api, workers)
    db.state = S.RUNNING
    assert deps_ready(api, workers)
    db.state, db.want_start = S.FATAL, False
    assert deps_ready(api, workers)  # not coming: do not wait forever
    assert deps_ready(db, workers)


def test_stop_all_goes_from_the_end_of_the_chain(workers: dict[str, Worker], lifecycle: Lifecycle) -> None:
    for pid, worker in enumerate(workers.values(), start=100):
        _running(worker, pid)
    stop_all = StopAll(workers, lifecycle, LeftoverGroups(grace_s=1.0, watchdog=WatchdogLink(enabled=False)))
    stop_all.begin("test")
    assert lifecycle.exiting and not stop_all.done()
    stop_all.step(100.0)
    assert {n: w.state for n, w in workers.items()} == {"db": S.RUNNING, "api": S.RUNNING, "bot": S.STOPPING}
    assert dependents_running(workers["api"], workers)
    workers["bot"].state, workers["bot"].pid = S.STOPPED, None
    stop_all.step(100.0)
    assert workers["api"].state is S.STOPPING and workers["db"].state is S.RUNNING
    # a command (health port or not) runs directly: no runner, no runner margin
    assert workers["api"].stop_deadline == 100.0 + workers["api"].config.limits.grace_s
    assert workers["api"].asked is not None and workers["api"].asked.reason is StopReason.STOPPED
    workers["api"].state = S.STOPPED
    stop_all.step(100.0)
    assert workers["db"].state is S.STOPPING
    workers["db"].state = S.STOPPED
    assert stop_all.done()


def test_failed_probes_in_a_row_stop_the_worker_as_a_liveness_failure(
    workers: dict[str, Worker], lifecycle: Lifecycle, tmp_path: Path
) -> None:
    api = workers["api"]
    _running(api, 4242)
    # a command's health port is answered by the supervisor itself: never probed (a run = worker's is)
    assert list(probe_targets(workers.values())) == []
    lifecycle.probe_result(api, ProbeResult("api", 1, False, "timed out"), 100.0)
    assert api.state is S.RUNNING and api.probe_failures == 1
    lifecycle.probe_result(api, ProbeResult("api", 1, True, "HTTP 200"), 100.0)
    assert api.probe_failures == 0
    lifecycle.probe_result(api, ProbeResult("api", 0, False, "about an older process"), 100.0)
    assert api.probe_failures == 0
    for _ in range(2):
        lifecycle.probe_result(api, ProbeResult("api", 1, False, "timed out"), 100.0)
    assert api.state is S.STOPPING and api.asked is not None
    assert api.asked.reason is StopReason.LIVENESS and api.asked.by is Ender.PROCGUARD and not api.asked.planned
    assert "2 health probes in a row failed: timed out" in api.asked.detail


def test_a_stop_request_cancels_a_backoff_and_answers_waiters(
    workers: dict[str, Worker], lifecycle: Lifecycle
) -> None:
    db = workers["db"]
    db.state, db.next_start_at = S.BACKOFF, 120.0
    answered: list[WorkerState] = []
    db.waiters.append(lambda w: answered.append(w.state))
    lifecycle.request_stop(db, 100.0, operator_stop("procguard stop"))
    assert db.state is S.STOPPED and db.next_start_at is None and answered == [S.STOPPED]


def test_a_spawn_that_fails_is_an_exit_127_in_the_history(
    workers: dict[str, Worker], lifecycle: Lifecycle, tmp_path: Path
) -> None:
    db = workers["db"]
    db.config = dataclasses.replace(db.config, command=(str(tmp_path / "missing"),))
    lifecycle.spawn(db, 100.0)
    # the first failure is retried at once, the second waits for its backoff
    assert db.state is S.BACKOFF and db.next_start_at == 100.0 + db.policy.initial_s
    assert db.restarts == 2 and db.last_exit is not None and db.last_exit["status"] == 127
    events = read_events(tmp_path / "history.sqlite", project="p", limit=0)
    assert [(e.event, e.exit_status, e.pid, e.reason, e.detail) for e in events] == [
        ("stop", 127, None, "crashed", "cannot start: No such file or directory")] * 2
    assert db.last_exit["reason"] == "crashed" and db.stops_total == {"crashed": 2}


def test_a_stop_the_worker_decided_itself_is_not_decided_twice(
    workers: dict[str, Worker], lifecycle: Lifecycle
) -> None:
    """A worker that reports its own stop on its link is STOPPING at once; an operator's stop that
    comes during it keeps it stopped afterwards but does not re-label how it ended."""
    from procguard.outcome import StopOutcome
    from procguard.supervisor.worker_link import WorkerLink

    db = workers["db"]
    _running(db, 4242)
    db.link = WorkerLink(db.config.limits)
    try:
        db.link.stopping = StopOutcome.decided(StopReason.MEMORY_LIMIT, "memory 120 MB over", by=Ender.PROCGUARD)
        lifecycle.worker_reported(db, 100.0)
        assert db.state is S.STOPPING and db.asked is None  # nothing sent: the worker is on it
        assert db.stop_deadline == 100.0 + db.config.limits.stop_budget_s
        lifecycle.request_stop(db, 101.0, operator_stop("procguard stop"))
        assert db.held_by_operator and db.asked is None
    finally:
        db.link.close()
