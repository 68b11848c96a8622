"""``procguard cleanup``: find every leftover of an instance and stop it safely.

Split the way the rest of procguard is: :func:`plan_cleanup` is a pure
function from a process-table snapshot (plus the instance records and who
is asking) to a list of targets, each with the reason it was chosen, and a
list of processes deliberately spared, each with the reason; :func:`execute_plan`
carries a plan out with :func:`procguard.proctree.stop_processes` (SIGTERM
to all, wait up to grace, SIGKILL the rest).

Who is a target of ``cleanup NAME``: the holder of NAME's instance lock
when the recorded (pid, start time) still matches, every process carrying
NAME's ``PROCGUARD_INSTANCE`` marker of this state directory (orphaned,
double-forked grandchildren included), and the descendants of those. A
process whose command line merely *contains* NAME is not a target.
``--match PATTERN`` selects by command line, for processes procguard did not
start, and adds their descendants (which ``pkill -f`` would orphan).

Never a target, whatever matched: pid <= 1, procguard itself, its ancestors
(the calling shell), another user's process, a process whose identity cannot
be confirmed, a process carrying the marker of another state directory (or
an older procguard's marker, which names none), and -- for ``--match`` --
processes managed by procguard (use ``cleanup NAME`` for those).
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psutil

from ..errors import UsageError
from ..procstat import start_ticks
from ..proctree import StopResult, protected_pids, stop_processes
from .identity import CREATE_TIME_TOLERANCE_S, ProcessIdentity
from .lock import InstanceRecord, list_instances
from .marker import parse_marker, read_marker, validate_name
from .statedir import namespace_of

log = logging.getLogger(__name__)

ALL = "all"
#: Passes of snapshot -> plan -> stop; later passes catch processes forked
#: while the earlier ones were stopping (a worker respawning a child).
MAX_PASSES = 3


@dataclass(frozen=True)
class ProcInfo:
    """One row of the process table, as the planner sees it."""

    pid: int
    ppid: int
    uid: int | None
    euid: int | None
    create_time: float
    name: str
    cmdline: tuple[str, ...] = ()
    marker: str | None = None
    start_ticks: int | None = None

    @property
    def command(self) -> str:
        return " ".join(self.cmdline) if self.cmdline else f"[{self.name}]"

    def identity(self) -> ProcessIdentity:
        return ProcessIdentity(self.pid, self.create_time, self.start_ticks)


@dataclass(frozen=True)
class Viewpoint:
    """Who is asking: the PIDs never to touch, the user whose processes we may stop,
    and the namespace (state directory) whose marked processes we may stop."""

    uid: int
    protected: frozenset[int]
    namespace: str

    @classmethod
    def current(cls, state_dir: str | os.PathLike[str] | None = None) -> Viewpoint:
        """Our uid and ancestors, and the namespace of ``state_dir`` (None: the environment's)."""
        return cls(uid=os.getuid(), protected=protected_pids(), namespace=namespace_of(state_dir))


@dataclass(frozen=True)
class Target:
    """A process the plan will stop, and why."""

    process: ProcInfo
    reason: str


@dataclass(frozen=True)
class Spared:
    """A process that was selected but will not be touched, and why."""

    pid: int
    name: str
    command: str
    reason: str


@dataclass(frozen=True)
class CleanupPlan:
    selector: str
    targets: tuple[Target, ...]
    spared: tuple[Spared, ...] = ()
    notes: tuple[str, ...] = ()


# -- snapshot (the only I/O before execution) --------------------------------
def snapshot_processes() -> list[ProcInfo]:
    """The current process table. Markers are read for our own user's processes only."""
    me = os.getuid()
    rows: list[ProcInfo] = []
    attrs = ["pid", "ppid", "name", "cmdline", "uids", "create_time"]
    for proc in psutil.process_iter(attrs):
        info = proc.info
        uids = info.get("uids")
        uid = int(uids.real) if uids is not None else None
        euid = int(uids.effective) if uids is not None else None
        created = info.get("create_time")
        if created is None:
            continue
        pid = int(info["pid"])
        mine = uid == me and euid == me
        rows.append(
            ProcInfo(
                pid=pid,
                ppid=int(info.get("ppid") or 0),
                uid=uid,
                euid=euid,
                create_time=float(created),
                name=str(info.get("name") or ""),
                cmdline=tuple(info.get("cmdline") or ()),
                marker=read_marker(pid) if mine else None,
                start_ticks=start_ticks(pid) if mine else None,
            )
        )
    return rows


# -- planning (pure) -----------------------------------------------------------
def _same_process(row: ProcInfo, ident: ProcessIdentity) -> bool:
    if row.pid != ident.pid:
        return False
    if row.start_ticks is not None and ident.start_ticks is not None:
        return row.start_ticks == ident.start_ticks
    return abs(row.create_time - ident.create_time) < CREATE_TIME_TOLERANCE_S


def _children_map(table: Sequence[ProcInfo]) -> dict[int, list[ProcInfo]]:
    children: dict[int, list[ProcInfo]] = {}
    for row in table:
        if row.ppid and row.ppid != row.pid:
            children.setdefault(row.ppid, []).append(row)
    return children


def _spare_reason(row: ProcInfo, view: Viewpoint) -> str | None:
    if row.pid <= 1:
        return "pid <= 1"
    if row.pid in view.protected:
        return "procguard itself or one of its ancestors (e.g. the calling shell)"
    if row.uid != view.uid or row.euid != view.uid:
        return f"another user's process (uid {row.uid})"
    return None


def _foreign_marker(row: ProcInfo, view: Viewpoint) -> str | None:
    """Why ``row``'s marker puts it outside the asking state directory; None if ours or unmarked."""
    parsed = parse_marker(row.marker) if row.marker else None
    if parsed is None or parsed.namespace == view.namespace:
        return None
    if parsed.namespace is None:
        return f"marker {row.marker} names no state directory (an older procguard started it)"
    return f"marker of another state directory ({row.marker})"


class _Collector:
    """Accumulates targets and spared processes, each PID once, in discovery order."""

    def __init__(self, view: Viewpoint, children: Mapping[int, list[ProcInfo]]) -> None:
        self.view = view
        self.children = children
        self.targets: dict[int, Target] = {}
        self.spared: dict[int, Spared] = {}

    def spare(self, row: ProcInfo, reason: str) -> None:
        if row.pid not in self.targets and row.pid not in self.spared:
            self.spared[row.pid] = Spared(row.pid, row.name, row.command, reason)

    def add(self, row: ProcInfo, reason: str, *, check_marker: bool = True) -> bool:
        """Target ``row`` unless it must be spared (its marker is checked unless told not to)."""
        if row.pid in self.targets or row.pid in self.spared:
            return False
        why_not = _spare_reason(row, self.view)
        if why_not is None and check_marker:
            why_not = _foreign_marker(row, self.view)
        if why_not is not None:
            self.spare(row, why_not)
            return False
        self.targets[row.pid] = Target(row, reason)
        return True

    def add_tree(self, row: ProcInfo, reason: str, *, check_marker: bool = True) -> None:
        """``row`` and its descendants; a spared process's subtree is not entered.

        A descendant carrying another state directory's marker is spared with
        its subtree: it belongs to another stack, whoever its parent is.
        """
        if not self.add(row, reason, check_marker=check_marker):
            return
        stack = [row]
        while stack:
            parent = stack.pop()
            for child in self.children.get(parent.pid, ()):
                if self.add(child, f"descendant of pid {row.pid}"):
                    stack.append(child)


def plan_cleanup(
    table: Sequence[ProcInfo],
    *,
    view: Viewpoint,
    instances: Sequence[InstanceRecord] = (),
    name: str | None = None,
    pattern: re.Pattern[str] | None = None,
) -> CleanupPlan:
    """Decide what ``cleanup NAME`` (``name``; ``"all"`` for every instance) or
    ``cleanup --match`` (``pattern``) would stop. No I/O, no signals.

    ``instances`` are the lock records of ``view``'s state directory (only
    those held, with an identity that matches a row of ``table``, make their
    holder a target). Marked processes count only with a marker of
    ``view.namespace``: those of another state directory, or an older
    procguard's marker that names none, are never targets.
    """
    if (name is None) == (pattern is None):
        msg = "give exactly one of name or pattern"
        raise ValueError(msg)
    by_pid = {row.pid: row for row in table}
    collector = _Collector(view, _children_map(table))
    notes: list[str] = []
    managed = _managed_pids(table, instances, by_pid, view)

    if name is not None:
        wanted = [r for r in instances if name in (ALL, r.name)]
        for record in wanted:
            _plan_holder(record, by_pid, collector, notes)
        foreign = 0
        for row in table:
            parsed = parse_marker(row.marker) if row.marker else None
            if parsed is None or name not in (ALL, parsed.name):
                continue
            why_not = _foreign_marker(row, view)
            if why_not is None:
                collector.add_tree(row, f"carries marker {row.marker}")
            elif name == ALL:
                foreign += 1
            else:
                collector.spare(row, why_not)
        if foreign:
            notes.append(
                f"{foreign} marked process(es) of other state directories (or of an older procguard) "
                "left alone"
            )
        selector = "all instances" if name == ALL else f"instance {name}"
    else:
        assert pattern is not None
        for row in table:
            if not row.cmdline or not pattern.search(" ".join(row.cmdline)):
                continue
            if _spare_reason(row, view) is None and row.pid in managed:
                collector.spare(row, managed[row.pid])
                continue
            collector.add_tree(row, f"command line matches {pattern.pattern!r}")
        selector = f"processes matching {pattern.pattern!r}"
    return CleanupPlan(
        selector=selector,
        targets=tuple(collector.targets.values()),
        spared=tuple(collector.spared.values()),
        notes=tuple(notes),
    )


def _plan_holder(
    record: InstanceRecord, by_pid: Mapping[int, ProcInfo], collector: _Collector, notes: list[str]
) -> None:
    if not record.held:
        if record.data:
            notes.append(f"instance {record.name}: stale record (lock not held); nothing signalled")
        return
    ident = record.identity
    if ident is None:
        holder = f"pid {record.holder_pid}" if record.holder_pid else "a process"
        notes.append(
            f"instance {record.name}: lock held by {holder} but its record cannot confirm the "
            f"identity ({record.error or 'no valid pid/start time'}); not signalled"
        )
        return
    row = by_pid.get(ident.pid)
    if row is None:
        notes.append(f"instance {record.name}: recorded pid {ident.pid} is not running")
        return
    if not _same_process(row, ident):
        why = f"pid {ident.pid} was recycled (start time differs from instance {record.name}'s record)"
        collector.spare(row, why)
        return
    # The lock file is in our state directory: its holder is ours, whatever
    # marker it inherited from the process that started it.
    collector.add_tree(row, f"holds the lock of instance {record.name}", check_marker=False)


def _managed_pids(
    table: Sequence[ProcInfo],
    instances: Sequence[InstanceRecord],
    by_pid: Mapping[int, ProcInfo],
    view: Viewpoint,
) -> dict[int, str]:
    """pid -> why ``--match`` leaves it alone: procguard manages it (here, or elsewhere)."""
    managed: dict[int, str] = {}
    for row in table:
        parsed = parse_marker(row.marker) if row.marker else None
        if parsed is None:
            continue
        if parsed.namespace == view.namespace:
            managed[row.pid] = f"managed by procguard (marker {row.marker}): use 'procguard cleanup NAME'"
        elif parsed.namespace is None:
            managed[row.pid] = f"managed by an older procguard (marker {row.marker}, no state directory)"
        else:
            managed[row.pid] = (
                f"managed by procguard from another state directory (marker {row.marker}): "
                "use 'procguard cleanup NAME --state-dir' with that directory"
            )
    for record in instances:
        ident = record.identity if record.held else None
        holder = by_pid.get(ident.pid) if ident else None
        if holder is not None and ident is not None and _same_process(holder, ident):
            why = f"managed by procguard (instance {record.name}): use 'procguard cleanup NAME'"
            managed[holder.pid] = why
    return managed


def pkill_match_set(
    table: Iterable[ProcInfo], pattern: re.Pattern[str], *, pkill_pid: int = -1
) -> list[ProcInfo]:
    """What ``pkill -f PATTERN`` would signal in ``table`` (computed, nothing is sent).

    pkill matches the full command line (the name for processes without
    one), any user's processes its caller may signal (all of them for root),
    and spares only itself -- not its shell, not its ancestors.
    """
    hits = []
    for row in table:
        if row.pid == pkill_pid:
            continue
        text = " ".join(row.cmdline) if row.cmdline else row.name
        if pattern.search(text):
            hits.append(row)
    return hits


# -- execution -------------------------------------------------------------------
@dataclass
class ReportEntry:
    pid: int
    name: str
    command: str
    reason: str
    result: str
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        data = {"pid": self.pid, "name": self.name, "command": self.command, "reason": self.reason,
                "result": self.result}
        if self.detail:
            data["detail"] = self.detail
        return data


#: Results that leave nothing running.
_DONE = {str(StopResult.TERMINATED), str(StopResult.KILLED), str(StopResult.ALREADY_GONE), "would_stop"}


@dataclass
class CleanupReport:
    """What cleanup found and did; ``complete`` is False if anything is left running."""

    selector: str
    dry_run: bool
    grace_s: float
    entries: list[ReportEntry] = field(default_factory=list)
    spared: list[Spared] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def complete(self) -> bool:
        return all(e.result in _DONE for e in self.entries)

    @property
    def failures(self) -> list[ReportEntry]:
        return [e for e in self.entries if e.result not in _DONE]

    def summary(self) -> str:
        if self.dry_run:
            return f"{len(self.entries)} process(es) would be stopped"
        counts: dict[str, int] = {}
        for entry in self.entries:
            counts[entry.result] = counts.get(entry.result, 0) + 1
        if not counts:
            return "nothing to stop"
        return ", ".join(f"{n} {result}" for result, n in sorted(counts.items()))

    def to_json(self) -> dict[str, Any]:
        return {
            "selector": self.selector,
            "dry_run": self.dry_run,
            "grace_seconds": self.grace_s,
            "complete": self.complete,
            "elapsed_seconds": round(self.elapsed_s, 3),
            "processes": [e.to_json() for e in self.entries],
            "spared": [
                {"pid": s.pid, "name": s.name, "command": s.command, "reason": s.reason} for s in self.spared
            ],
            "notes": list(self.notes),
        }


def execute_plan(plan: CleanupPlan, grace_s: float) -> list[ReportEntry]:
    """Stop the plan's targets; one entry per target with its result.

    Each target is re-identified (pid + start time) right before signalling;
    one that exited or was recycled since the snapshot is ``already_gone``.
    """
    entries: dict[int, ReportEntry] = {}
    procs: list[psutil.Process] = []
    for target in plan.targets:
        row = target.process
        gone = str(StopResult.ALREADY_GONE)
        entries[row.pid] = ReportEntry(row.pid, row.name, row.command, target.reason, gone)
        proc = row.identity().process()
        if proc is not None:
            procs.append(proc)
    for outcome in stop_processes(procs, grace_s):
        entry = entries[outcome.pid]
        entry.result = str(outcome.result)
        entry.detail = outcome.detail
        log.info("pid %s (%s): %s", outcome.pid, entry.name, outcome.result)
    return list(entries.values())


def run_cleanup_passes(
    make_plan: Callable[[], CleanupPlan],
    *,
    grace_s: float,
    dry_run: bool,
) -> CleanupReport:
    """Plan and execute up to :data:`MAX_PASSES` times, until a fresh snapshot shows
    no target that was not handled already. ``make_plan()`` snapshots and plans."""
    started = time.monotonic()
    plan = make_plan()
    report = CleanupReport(plan.selector, dry_run, grace_s, spared=list(plan.spared), notes=list(plan.notes))
    if dry_run:
        report.entries = [
            ReportEntry(t.process.pid, t.process.name, t.process.command, t.reason, "would_stop")
            for t in plan.targets
        ]
        report.elapsed_s = time.monotonic() - started
        return report
    handled: set[tuple[int, float]] = set()
    for _ in range(MAX_PASSES):
        todo = tuple(t for t in plan.targets if (t.process.pid, t.process.create_time) not in handled)
        if not todo:
            break
        handled.update((t.process.pid, t.process.create_time) for t in todo)
        for entry in execute_plan(CleanupPlan(plan.selector, todo), grace_s):
            _merge(report, entry)
        plan = make_plan()
        known = {s.pid for s in report.spared} | {e.pid for e in report.entries}
        report.spared += [s for s in plan.spared if s.pid not in known]
    else:
        # Still new targets after the last pass: something keeps starting them
        # (a supervisor restarting its workers?). Say so; never report success.
        for target in plan.targets:
            row = target.process
            if (row.pid, row.create_time) not in handled:
                report.entries.append(
                    ReportEntry(row.pid, row.name, row.command, target.reason, "respawned",
                                f"appeared after {MAX_PASSES} passes; stop whatever restarts it first")
                )
    report.elapsed_s = time.monotonic() - started
    return report


def _merge(report: CleanupReport, entry: ReportEntry) -> None:
    for i, old in enumerate(report.entries):
        if old.pid == entry.pid:
            report.entries[i] = entry
            return
    report.entries.append(entry)


# -- which name (cleanup NAME given a stack's worker name) --------------------------
#: Instance-lock names of stack supervisors (``supervisor.PROJECT``): never a worker.
_SUPERVISOR_PREFIX = "supervisor."


@dataclass(frozen=True)
class NameChoice:
    """The instance ``cleanup NAME`` acts on, and what to tell the user about the choice."""

    name: str
    note: str = ""


def namespace_names(
    table: Iterable[ProcInfo], instances: Iterable[InstanceRecord], view: Viewpoint
) -> set[str]:
    """Instance names known in ``view``'s state directory: lock records and markers of its namespace."""
    names = {record.name for record in instances}
    for row in table:
        parsed = parse_marker(row.marker) if row.marker else None
        if parsed is not None and parsed.namespace == view.namespace and row.uid == view.uid:
            names.add(parsed.name)
    return names


def _stack_worker(name: str) -> str | None:
    """The worker part of ``PROJECT.WORKER`` (worker and project names hold no dot), else None."""
    project, dot, worker = name.partition(".")
    if not dot or not project or not worker or "." in worker or name.startswith(_SUPERVISOR_PREFIX):
        return None
    return worker


def choose_name(name: str, known: Collection[str], stack_workers: Collection[str] = ()) -> NameChoice:
    """What ``cleanup NAME`` means (pure).

    ``known``: the instance names of the state directory (lock records and
    markers of its namespace); ``stack_workers``: ``PROJECT.WORKER`` of the
    stacks running there. NAME itself when it is known (or ``all``);
    otherwise the one ``PROJECT.NAME`` it is the worker name of, said in the
    note; several such stacks are a UsageError listing the full names; none
    gives a note with similar names.
    """
    if name == ALL or name in known:
        return NameChoice(name)
    candidates = set(known) | set(stack_workers)
    full = sorted(c for c in candidates if _stack_worker(c) == name)
    if len(full) == 1:
        project = full[0].partition(".")[0]
        return NameChoice(full[0], f"{name!r} is worker {name} of stack {project}: using instance {full[0]}")
    if full:
        msg = (
            f"{name!r} is a worker of {len(full)} stacks in this state directory: {', '.join(full)} "
            "(give the full name)"
        )
        raise UsageError(msg)
    import difflib  # only for this hint

    # Close to a full name, or to the worker part of one ('colector' -> analyticbot.collector).
    spellings: dict[str, set[str]] = {}
    for candidate in candidates:
        for spelling in (candidate, _stack_worker(candidate)):
            if spelling:
                spellings.setdefault(spelling, set()).add(candidate)
    close = difflib.get_close_matches(name, sorted(spellings), n=3, cutoff=0.6)
    similar = sorted({match for spelling in close for match in spellings[spelling]})
    hint = f"; did you mean {' or '.join(similar)}?" if similar else ""
    return NameChoice(name, f"no instance or marked process named {name!r} in this state directory{hint}")


def resolve_name(
    name: str,
    *,
    state_dir: str | os.PathLike[str] | None = None,
    stack_workers: Collection[str] = (),
) -> NameChoice:
    """:func:`choose_name` with the state directory's lock records and the process table's markers."""
    if name == ALL:
        return NameChoice(name)
    validate_name(name)
    instances = list_instances(state_dir)
    if any(record.name == name for record in instances):
        return NameChoice(name)  # no need to read every process's environment
    known = namespace_names(snapshot_processes(), instances, Viewpoint.current(state_dir))
    return choose_name(name, known, stack_workers)


def cleanup_instances(
    name: str,
    *,
    grace_s: float,
    state_dir: str | os.PathLike[str] | None = None,
    dry_run: bool = False,
) -> CleanupReport:
    """Stop every live instance of ``name`` (``"all"``: every instance) of the state
    directory and every process carrying its marker there. See :func:`plan_cleanup`
    for who is spared."""
    if name != ALL:
        validate_name(name)

    def make_plan() -> CleanupPlan:
        view = Viewpoint.current(state_dir)
        instances = list_instances(state_dir)
        return plan_cleanup(snapshot_processes(), view=view, instances=instances, name=name)

    return run_cleanup_passes(make_plan, grace_s=grace_s, dry_run=dry_run)


def cleanup_matching(
    pattern: re.Pattern[str],
    *,
    grace_s: float,
    state_dir: str | os.PathLike[str] | None = None,
    dry_run: bool = False,
    before_execute: Callable[[CleanupPlan], None] | None = None,
) -> CleanupReport:
    """Stop our user's processes whose command line matches ``pattern``, and their descendants.

    ``before_execute(plan)`` is called with the first plan before any signal
    is sent (the CLI lists what matched there).
    """

    def make_plan() -> CleanupPlan:
        view = Viewpoint.current(state_dir)
        instances = list_instances(state_dir)
        return plan_cleanup(snapshot_processes(), view=view, instances=instances, pattern=pattern)

    first: list[CleanupPlan] = []

    def make_plan_once_announced() -> CleanupPlan:
        plan = make_plan()
        if not first:
            first.append(plan)
            if before_execute is not None:
                before_execute(plan)
        return plan

    return run_cleanup_passes(make_plan_once_announced, grace_s=grace_s, dry_run=dry_run)
