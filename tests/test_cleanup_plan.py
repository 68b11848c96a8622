"""The cleanup planner as a pure function over a process-table snapshot.

No process is started here: each table is written out by hand, the way
supervisor's tests set a process's state and call ``transition()``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from procguard.errors import UsageError
from procguard.instances.cleanup import (
    CleanupReport,
    NameChoice,
    ProcInfo,
    ReportEntry,
    Viewpoint,
    choose_name,
    namespace_names,
    pkill_match_set,
    plan_cleanup,
)
from procguard.instances.lock import InstanceRecord

ME = 1000
NS = "0badcafe"  # the namespace of the state directory asking
OTHER = "5ca1ab1e"  # another state directory's
VIEW = Viewpoint(uid=ME, protected=frozenset({0, 1, 500, 400, 300}), namespace=NS)  # 500 = cleanup, 400 = shell


def row(pid: int, ppid: int, cmd: str, *, uid: int = ME, marker: str | None = None, created: float | None = None,
        ticks: int | None = None) -> ProcInfo:
    return ProcInfo(pid=pid, ppid=ppid, uid=uid, euid=uid, create_time=created or 1000.0 + pid, name=cmd.split(maxsplit=1)[0],
                    cmdline=tuple(cmd.split()), marker=marker, start_ticks=ticks)


def record(name: str, pid: int, created: float, *, held: bool = True, marker: str | None = None,
           ticks: int | None = None) -> InstanceRecord:
    data = {"pid": pid, "create_time": created, "marker": marker, "start_ticks": ticks}
    return InstanceRecord(name=name, path=Path(f"/nonexistent/{name}.lock"), held=held, data=data)


TABLE = [
    row(1, 0, "/sbin/init"),
    row(300, 1, "sshd: user", uid=0),
    row(400, 300, "bash -c procguard cleanup collector"),      # the calling shell
    row(500, 400, "python -m procguard cleanup collector"),    # cleanup itself
    # instance "collector": runner 600 holds the lock, worker 601, mp children 602/603
    row(600, 1, "python -m procguard run collector:collect --name collector"),
    row(601, 600, "python worker.py", marker=f"collector:{NS}-aaa"),
    row(602, 601, "python -c from multiprocessing.spawn import spawn_main", marker=f"collector:{NS}-aaa"),
    row(603, 601, "python -c from multiprocessing.spawn import spawn_main", marker=f"collector:{NS}-aaa"),
    # a double-forked escapee from an earlier run: re-parented to init, still marked
    row(700, 1, "python daemon.py", marker=f"collector:{NS}-old"),
    # decoys whose command lines contain the name
    row(800, 1, "vim collector.py"),
    row(801, 1, "tail -f /var/log/collector.log"),
    row(802, 1, "python collector_tests.py", marker=f"collector-tests:{NS}-bbb"),
    # another user's process carrying our marker and name
    row(900, 1, "python collector.py", uid=1001, marker=f"collector:{NS}-aaa"),
    # legacy workers (not started by procguard) with unmarked children
    row(1000, 1, "python legacy_worker.py --queue jobs"),
    row(1001, 1000, "python -c from multiprocessing.spawn import spawn_main"),
    row(1002, 1000, "python -c from multiprocessing.spawn import spawn_main"),
    row(1100, 1, "python legacy_worker.py --queue jobs", uid=1001),
]
INSTANCES = [record("collector", 600, 1600.0, marker=f"collector:{NS}-aaa")]


def pids(plan) -> set[int]:
    return {t.process.pid for t in plan.targets}


def spared(plan) -> dict[int, str]:
    return {s.pid: s.reason for s in plan.spared}


def test_cleanup_name_takes_holder_tree_and_marked_processes_only() -> None:
    plan = plan_cleanup(TABLE, view=VIEW, instances=INSTANCES, name="collector")
    assert pids(plan) == {600, 601, 602, 603, 700}
    reasons = {t.process.pid: t.reason for t in plan.targets}
    assert "holds the lock of instance collector" in reasons[600]
    assert f"marker collector:{NS}-old" in reasons[700]
    # Decoys whose command line contains the name are not even candidates.
    assert not {800, 801, 802} & (pids(plan) | set(spared(plan)))
    assert "another user" in spared(plan)[900]


def test_cleanup_all_covers_every_instance_and_marker() -> None:
    plan = plan_cleanup(TABLE, view=VIEW, instances=INSTANCES, name="all")
    assert pids(plan) == {600, 601, 602, 603, 700, 802}


def test_stale_or_unconfirmed_holder_is_never_a_target() -> None:
    stale = [record("collector", 600, 1600.0, held=False)]
    assert pids(plan_cleanup(TABLE, view=VIEW, instances=stale, name="collector")) == {601, 602, 603, 700}
    # Forced PID reuse: the lock is held, but pid 600 is a different process now.
    recycled = [record("collector", 600, 1234.5)]
    plan = plan_cleanup(TABLE, view=VIEW, instances=recycled, name="collector")
    assert 600 not in pids(plan) and "recycled" in spared(plan)[600]
    recycled_ticks = [record("collector", 600, 1600.0, ticks=5)]
    table = [*TABLE[:4], row(600, 1, "python impostor", ticks=9), *TABLE[5:]]
    assert 600 not in pids(plan_cleanup(table, view=VIEW, instances=recycled_ticks, name="collector"))


@pytest.mark.parametrize("poison_pid", [0, -1, 1, 400, 500])
def test_poisoned_records_select_nothing_dangerous(poison_pid: int) -> None:
    row_created = next((r.create_time for r in TABLE if r.pid == poison_pid), 1.0)
    poisoned = [record("collector", poison_pid, row_created)]
    plan = plan_cleanup(TABLE, view=VIEW, instances=poisoned, name="collector")
    assert not {0, -1, 1, 300, 400, 500} & pids(plan)


def test_match_spares_shell_self_other_users_and_managed_processes() -> None:
    plan = plan_cleanup(TABLE, view=VIEW, instances=INSTANCES, pattern=re.compile("collector"))
    assert pids(plan) == {800, 801}
    why = spared(plan)
    assert "ancestors" in why[400] and "ancestors" in why[500]
    assert "another user" in why[900]
    assert "managed by procguard" in why[600] and "managed by procguard" in why[802]


def test_match_takes_descendants_that_pkill_would_orphan() -> None:
    pattern = re.compile(r"legacy_worker\.py")
    plan = plan_cleanup(TABLE, view=VIEW, pattern=pattern)
    assert pids(plan) == {1000, 1001, 1002}
    assert "another user" in spared(plan)[1100]
    would_pkill = {r.pid for r in pkill_match_set(TABLE, pattern)}
    assert would_pkill == {1000, 1100}  # misses the children, hits another user


def test_pkill_would_hit_its_own_shell_and_decoys() -> None:
    hits = {r.pid for r in pkill_match_set(TABLE, re.compile("collector"), pkill_pid=500)}
    assert {400, 800, 801, 802, 900, 600} <= hits


def test_descendants_of_spared_processes_are_not_pulled_in() -> None:
    table = [*TABLE, row(401, 400, "sleep 100")]
    plan = plan_cleanup(table, view=VIEW, pattern=re.compile("bash"))
    assert pids(plan) == set()
    assert 401 not in spared(plan)


def test_exactly_one_selector() -> None:
    with pytest.raises(ValueError):
        plan_cleanup(TABLE, view=VIEW)
    with pytest.raises(ValueError):
        plan_cleanup(TABLE, view=VIEW, name="x", pattern=re.compile("x"))


def test_report_is_incomplete_on_eperm_and_says_so() -> None:
    report = CleanupReport("instance x", dry_run=False, grace_s=1.0)
    report.entries = [ReportEntry(1, "a", "a", "r", "terminated"), ReportEntry(2, "b", "b", "r", "denied", "EPERM")]
    assert not report.complete
    assert [e.pid for e in report.failures] == [2]
    assert "1 denied" in report.summary()
    data = report.to_json()
    assert data["complete"] is False and data["processes"][1]["detail"] == "EPERM"


# Another stack with the same instance name in another state directory, and a
# process of an older procguard whose marker names no state directory.
ELSEWHERE = [
    row(1200, 1, "python -m procguard run collector:collect --name collector"),
    row(1201, 1200, "python worker.py", marker=f"collector:{OTHER}-ccc"),
    row(1202, 1201, "python -c from multiprocessing.spawn import spawn_main", marker=f"collector:{OTHER}-ccc"),
    row(1300, 1, "python old_worker.py", marker="collector:0123456789ab"),
    # a child of our own worker that runs a stack of its own state directory
    row(604, 601, "procguard up --state-dir /elsewhere", marker=f"inner.api:{OTHER}-ddd"),
    row(605, 604, "sleep 100", marker=f"inner.api:{OTHER}-ddd"),
]


def test_cleanup_name_never_touches_markers_of_other_state_directories() -> None:
    plan = plan_cleanup([*TABLE, *ELSEWHERE], view=VIEW, instances=INSTANCES, name="collector")
    assert pids(plan) == {600, 601, 602, 603, 700}
    why = spared(plan)
    assert why[1201] == f"marker of another state directory (collector:{OTHER}-ccc)"
    assert "another state directory" in why[1202]
    assert "names no state directory" in why[1300]
    # A descendant of our worker carrying another state directory's marker is spared with its subtree.
    assert "another state directory" in why[604] and 605 not in pids(plan)
    assert 1200 not in pids(plan) | set(why)  # unmarked, holds no lock of ours: not even a candidate


def test_cleanup_all_stays_in_its_state_directory() -> None:
    plan = plan_cleanup([*TABLE, *ELSEWHERE], view=VIEW, instances=INSTANCES, name="all")
    assert pids(plan) == {600, 601, 602, 603, 700, 802}
    assert any("other state directories" in note for note in plan.notes)


def test_the_same_table_seen_from_the_other_state_directory() -> None:
    other_view = Viewpoint(uid=ME, protected=VIEW.protected, namespace=OTHER)
    plan = plan_cleanup([*TABLE, *ELSEWHERE], view=other_view, name="collector")
    assert pids(plan) == {1201, 1202}
    assert "another state directory" in spared(plan)[601]


def test_match_spares_processes_of_every_procguard_and_says_whose() -> None:
    plan = plan_cleanup([*TABLE, *ELSEWHERE], view=VIEW, instances=INSTANCES, pattern=re.compile("worker"))
    why = spared(plan)
    assert "use 'procguard cleanup NAME'" in why[601]
    assert "another state directory" in why[1201]
    assert "older procguard" in why[1300]
    assert not {601, 1201, 1300} & pids(plan)


def test_a_stack_worker_name_is_chosen_only_when_unambiguous() -> None:
    known = {"analyticbot.collector", "analyticbot.api", "shop.api", "supervisor.analyticbot", "collector2"}
    assert choose_name("analyticbot.api", known) == NameChoice("analyticbot.api")
    assert choose_name("all", known) == NameChoice("all")
    chosen = choose_name("collector", known)
    assert chosen.name == "analyticbot.collector" and "stack analyticbot" in chosen.note
    # A stopped worker of a running stack has no marker now: the stack's config still names it.
    assert choose_name("bot", known, ["analyticbot.bot"]).name == "analyticbot.bot"
    with pytest.raises(UsageError, match=r"2 stacks .*: analyticbot\.api, shop\.api"):
        choose_name("api", known)
    # A supervisor's lock is not a worker: 'analyticbot' is nobody's worker name.
    assert choose_name("analyticbot", known).name == "analyticbot"
    nothing = choose_name("colector", known)
    assert nothing.name == "colector"
    assert "did you mean analyticbot.collector or collector2?" in nothing.note
    assert choose_name("zzz", known).note.endswith("in this state directory")


def test_namespace_names_are_records_and_markers_of_this_state_directory() -> None:
    table = [*TABLE, *ELSEWHERE]
    names = namespace_names(table, INSTANCES, VIEW)
    assert names == {"collector", "collector-tests"}  # not inner.api (another state directory)
