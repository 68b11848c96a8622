"""``[workers.X.autoscale]`` carried out: read the copies' gauge, decide, scale, write it down.

Every ``interval`` the loop reads ``metric`` from each copy of an autoscaled
worker, from the snapshot the copy publishes into the mapping the supervisor
handed it (:mod:`.function_health`): no HTTP, the same figures the copy's
port answers. A copy with no process, with nothing published yet, with a
stale snapshot (hung, stopped) or without the metric is unknown, never 0.
The decision is :func:`procguard.autoscale.decide` (pure); a change goes
through the path ``procguard scale`` takes (:meth:`.commands.ControlCommands.scale_group`:
new copies after the last, the newest drained and stopped first) and is
written as a ``scale`` history row (from, to, the metric's total) and one
log line. While a scale-down is still stopping copies no reading is taken.

A metric that no running copy publishes for longer than a minute
(``UNKNOWN_METRIC_WARN_AFTER_S``) is named in one warning (a typo in ``metric``, or a program that never calls
``set_gauge``); the stack goes on at its current count.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from ..autoscale import UNKNOWN_METRIC_WARN_AFTER_S, AutoscaleRule, Decision, Memory, Reading, decide
from .control import Peer
from .history import Event, History
from .worker import Worker

logger = logging.getLogger(__name__)

#: ``by`` of a scale the autoscaler does (history, the stop of a copy it takes away).
BY = "autoscale"


class Scaler(Protocol):
    """What the autoscaler needs from the commands: the scale path and who the copies are."""

    def scale_group(
        self, group: str, want: int, peer: Peer | None, *, by: str = ...,
        done: Callable[[int, int], None] | None = ...,
    ) -> tuple[str, int] | None: ...

    def copies_of(self, group: str) -> list[Worker]: ...

    def scaling(self, group: str) -> bool: ...


def copy_value(worker: Worker, metric: str) -> float | None:
    """The copy's latest ``metric``, or None when it cannot be known now."""
    view = worker.published
    if view is None or not worker.state.has_process:
        return None
    gauges = view.fresh_gauges()
    return None if gauges is None else gauges.get(metric)


class _Group:
    """One autoscaled worker's running state."""

    __slots__ = ("memory", "missing_since", "next_at", "refused", "warned")

    def __init__(self, now: float) -> None:
        self.memory = Memory()
        self.next_at = now
        self.missing_since: float | None = None
        self.warned = False
        self.refused = ""  # the last reason a scale could not be done (said once until it changes)


class Autoscaler:
    """Reads and scales every autoscaled worker at its own pace; :meth:`tick` from the loop."""

    def __init__(
        self,
        *,
        project: str,
        rules: Callable[[], Mapping[str, AutoscaleRule]],
        scaler: Scaler,
        history: History,
        wall_clock: Callable[[], float],
        warn_missing_after_s: float = UNKNOWN_METRIC_WARN_AFTER_S,
    ) -> None:
        self._project = project
        self._warn_after_s = warn_missing_after_s
        self._rules = rules
        self._scaler = scaler
        self._history = history
        self._wall = wall_clock
        self._groups: dict[str, _Group] = {}

    def next_due(self) -> float | None:
        """When the next reading is due (None: no worker is autoscaled)."""
        due = [group.next_at for name, group in self._groups.items() if name in self._rules()]
        return min(due) if due else None

    def tick(self, now: float) -> None:
        """Take the readings that are due and act on them."""
        rules = self._rules()
        for name in list(self._groups):
            if name not in rules:
                del self._groups[name]  # a reload took the rule (or the worker) away
        for name, rule in rules.items():
            group = self._groups.get(name)
            if group is None:
                group = self._groups[name] = _Group(now + rule.interval_s)  # copies start first
                continue
            if now < group.next_at:
                continue
            group.next_at = now + rule.interval_s
            if self._scaler.scaling(name):
                continue
            self._read_and_act(name, rule, group, now)

    def _read_and_act(self, name: str, rule: AutoscaleRule, group: _Group, now: float) -> None:
        copies = self._scaler.copies_of(name)
        if not copies:
            return
        reading = Reading(tuple(copy_value(worker, rule.metric) for worker in copies))
        self._watch_missing(name, rule, group, copies, now, known=bool(reading.known))
        decision, memory = decide(rule, len(copies), reading, now, group.memory)
        self._show(copies, rule, decision, reading)
        if decision.change_to is None or decision.change_to == len(copies):
            group.memory = memory
            return

        def done(have: int, want: int) -> None:
            self._record(name, rule, (have, want), decision, reading)

        refused = self._scaler.scale_group(name, decision.change_to, None, by=BY, done=done)
        if refused is None:
            group.memory = memory
            group.refused = ""
        elif refused[0] != group.refused:
            group.refused = refused[0]
            logger.warning("%s: autoscale to %d copies not done: %s", name, decision.change_to, refused[0])

    def _watch_missing(
        self, name: str, rule: AutoscaleRule, group: _Group, copies: list[Worker], now: float, *, known: bool
    ) -> None:
        """One warning once running copies have published for a minute without ``metric``."""
        publishing = [w for w in copies if w.published is not None and w.published.fresh_gauges() is not None]
        if known or not publishing:
            group.missing_since = None
            return
        if group.missing_since is None:
            group.missing_since = now
        elif not group.warned and now - group.missing_since >= self._warn_after_s:
            group.warned = True
            logger.warning(
                "%s: autoscale metric %r not published by any copy for %.0f s (the program calls"
                " manager.set_gauge(%r, n)?); the count stays at %d",
                name, rule.metric, now - group.missing_since, rule.metric, len(copies),
            )

    def _show(self, copies: list[Worker], rule: AutoscaleRule, decision: Decision, reading: Reading) -> None:
        shown: dict[str, Any] = {
            **rule.to_json(),
            "value": decision.total,
            "copies_read": len(reading.known),
            "copies_unknown": reading.unknown,
            "wanted": decision.want,
            "why": decision.why,
        }
        for worker in copies:
            worker.autoscale_shown = shown

    def _record(
        self, name: str, rule: AutoscaleRule, change: tuple[int, int], decision: Decision, reading: Reading
    ) -> None:
        have, want = change
        value = "unknown" if decision.total is None else f"{decision.total:g}"
        unknown = f", {reading.unknown} unknown" if reading.unknown else ""
        detail = f"from {have} to {want} copies; {rule.metric} {value} ({len(reading.known)} read{unknown})"
        logger.info("%s: autoscale %s", name, detail)
        self._history.record(
            Event(project=self._project, worker=name, time=self._wall(), event="scale", reason=BY,
                  detail=detail, by=BY)
        )
