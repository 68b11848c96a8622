"""One stop outcome: the value every surface renders.

A :class:`StopOutcome` is created once, where the stop is decided (the
in-process manager's monitor, ``procguard run`` watching a command, the
supervisor reaping a worker), and then only rendered: the exit status, the
worker's last log line, ``procguard status`` and ``history``, ``procguard
logs``, the status page and the supervisor's ``procguard_worker_stops_total``
all read the same reason token, detail and status from it. It crosses a
process boundary (worker -> supervisor) as JSON through one codec
(:meth:`StopOutcome.to_json` / :meth:`StopOutcome.from_json`).

:func:`outcome_of_exit` is the one rule a watcher applies when a process it
watched has exited: what it had asked for, what the worker reported, and how
the process actually ended decide the outcome together.
"""

from __future__ import annotations

import signal
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple

from .reasons import (
    EXPECTED_REASONS,
    REASONS,
    STOP_SIGNUMS,
    Ender,
    StopReason,
    describe_status,
    exit_status_for,
    reason_for_exit_status,
    signal_name,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

#: Longest detail kept (a detail is figures and a cause, never a traceback).
MAX_DETAIL = 400


#: The figures of an outcome that has none (read-only, so one value serves every outcome).
_NO_FIGURES: Mapping[str, float] = MappingProxyType({})


class StopOutcome(NamedTuple):
    """Why a worker stopped, the figures behind it, how it exited and who ended it.

    ``exit_status`` is the status the process exited with (None when it died
    of a signal, then ``signal`` names it; both None while the stop is only
    decided, not yet done). ``figures`` are the numbers the decision was made
    on (``memory_bytes``, ``memory_limit_bytes``, ...), e.g. for the history's
    peak memory. A frozen NamedTuple rather than a dataclass: the long-lived
    command runner imports it and stays small without ``dataclasses``.
    """

    reason: StopReason
    detail: str = ""
    exit_status: int | None = None
    signal: int | None = None
    by: Ender = Ender.WORKER
    figures: Mapping[str, float] = _NO_FIGURES

    # -- what it means ----------------------------------------------------------

    @property
    def planned(self) -> bool:
        """A planned recycle: restart at once, never a failure."""
        return REASONS[self.reason].planned

    @property
    def expected(self) -> bool:
        """A normal end (a recycle, a stop someone asked for): logged at INFO, the others at WARNING."""
        return self.planned or self.reason in EXPECTED_REASONS

    @property
    def status_code(self) -> int | None:
        """The status as a shell reports it: the exit status, or 128 + N for a death by signal N."""
        if self.exit_status is not None:
            return self.exit_status
        if self.signal is not None:
            return 128 + self.signal
        return None

    def explanation(self) -> str:
        """What the reason means, in plain words."""
        return REASONS[self.reason].words

    def status_words(self) -> str:
        """What the exit status means, in plain words (``86: hard memory ceiling ...``)."""
        return describe_status(self.exit_status, self.signal)

    def summary(self) -> str:
        """One line for logs and notes: ``memory_limit (memory 248.5 MB over ...); exit 82``."""
        text = self.reason.value
        if self.detail:
            text += f" ({self.detail})"
        if self.exit_status is not None:
            text += f"; exit {self.exit_status}"
        elif self.signal is not None:
            text += f"; {signal_name(self.signal)}"
        return text

    # -- building ------------------------------------------------------------------

    def exited(self, returncode: int) -> StopOutcome:
        """This decision, now done: the process ended with Popen's ``returncode`` (-N: signal N)."""
        if returncode < 0:
            return self._replace(exit_status=None, signal=-returncode)
        return self._replace(exit_status=returncode, signal=None)

    def with_changes(self, **changes: Any) -> StopOutcome:
        """A copy with some fields replaced (a detail completed, the exit status filled in)."""
        return self._replace(**changes)

    @classmethod
    def decided(
        cls,
        reason: StopReason,
        detail: str,
        *,
        by: Ender,
        signum: int | None = None,
        figures: Mapping[str, float] | None = None,
    ) -> StopOutcome:
        """A stop decided by whoever watches the worker, with the exit status its reason implies."""
        status = exit_status_for(reason, signum) if REASONS[reason].status is not None else None
        return cls(
            reason,
            _clip(detail),
            exit_status=status,
            by=by,
            figures=MappingProxyType(dict(figures or {})),
        )

    # -- the codec (worker -> supervisor, history rows) ---------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "reason": self.reason.value,
            "detail": self.detail,
            "exit_status": self.exit_status,
            "signal": self.signal,
            "by": self.by.value,
            "figures": dict(self.figures),
        }

    @classmethod
    def from_json(cls, data: object) -> StopOutcome | None:
        """The outcome in ``data``, or None when it is not a well-formed one (never raises)."""
        if not isinstance(data, dict):
            return None
        try:
            reason = StopReason(data.get("reason"))
            by = Ender(data.get("by", Ender.WORKER.value))
        except ValueError:
            return None
        detail = data.get("detail", "")
        status, signum = data.get("exit_status"), data.get("signal")
        figures = data.get("figures") or {}
        if not isinstance(detail, str) or not isinstance(figures, dict):
            return None
        if not _int_or_none(status) or not _int_or_none(signum):
            return None
        clean = {
            str(k): float(v)
            for k, v in figures.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        return cls(reason, _clip(detail), status, signum, by, MappingProxyType(clean))


def _int_or_none(value: object) -> bool:
    return value is None or (isinstance(value, int) and not isinstance(value, bool))


def _clip(detail: str) -> str:
    detail = " ".join(detail.split())  # one line, whatever it was given
    return detail if len(detail) <= MAX_DETAIL else detail[: MAX_DETAIL - 3] + "..."


def outcome_of_exit(
    returncode: int,
    *,
    asked: StopOutcome | None = None,
    reported: StopOutcome | None = None,
    forced: bool = False,
    grace_s: float | None = None,
    sent: StopOutcome | None = None,
) -> StopOutcome:
    """The outcome of a watched process that exited with Popen's ``returncode`` (-N: signal N).

    ``asked`` is the stop the watcher decided (a limit, an operator's stop, a
    failed probe; None when it asked for nothing), ``reported`` what the
    worker said about its own stop, ``forced`` whether the watcher had to
    SIGKILL it once ``grace_s`` was over, ``sent`` what a signal an operator had
    the watcher send (``procguard signal``) means if it ends the process. The
    rules, in order:

    - the worker ended itself at once (hard memory ceiling, grace exceeded)
      and exited as it said: that is the outcome;
    - the watcher asked: its reason, unless it had to force the stop
      (``grace_exceeded``);
    - the worker reported a stop and exited as it said it would: its outcome;
    - it died of the signal an operator sent (or exited 128 + its number):
      ``sent``;
    - otherwise the way the process ended speaks: SIGTERM/SIGINT procguard did
      not send (or the statuses 130/143) -> ``external_signal``; any other
      signal -> ``killed``; 80-87 -> the reason of that status; 0 ->
      ``completed``; any other status -> ``crashed``. A report the exit
      contradicts is named in the detail.
    """
    exited_as_reported = reported is not None and _matches(reported, returncode)
    if reported is not None and exited_as_reported and reported.reason in _EMERGENCIES:
        return reported.exited(returncode)
    if asked is not None:
        if forced and asked.reason is not StopReason.HARD_MEMORY_LIMIT:
            within = f" within its grace of {grace_s:g}s" if grace_s is not None else " within its grace"
            return StopOutcome(
                StopReason.GRACE_EXCEEDED,
                _clip(f"the stop ({asked.reason}: {asked.detail}) did not finish{within}; killed"),
                by=Ender.PROCGUARD,
                figures=asked.figures,
            ).exited(returncode)
        return asked.exited(returncode)
    if reported is not None and exited_as_reported:
        return reported.exited(returncode)
    if sent is not None and sent.signal is not None and returncode in (-sent.signal, 128 + sent.signal):
        return sent.exited(returncode)
    return _from_exit_alone(returncode, reported)


#: Stops a worker makes at once, on its own, whatever was asked of it.
_EMERGENCIES = frozenset({StopReason.HARD_MEMORY_LIMIT, StopReason.GRACE_EXCEEDED})


def _matches(reported: StopOutcome, returncode: int) -> bool:
    if returncode < 0:
        return reported.signal == -returncode
    return reported.exit_status == returncode


def _from_exit_alone(returncode: int, reported: StopOutcome | None) -> StopOutcome:
    said = f"; it had reported {reported.reason} ({reported.detail})" if reported is not None else ""
    if returncode < 0:
        signum = -returncode
        if signum in STOP_SIGNUMS:
            return StopOutcome(
                StopReason.EXTERNAL_SIGNAL,
                _clip(f"{signal_name(signum)} from outside procguard{said}"),
                signal=signum,
                by=Ender.OUTSIDE,
            )
        hint = " (perhaps the kernel's OOM killer)" if signum == signal.SIGKILL else ""
        return StopOutcome(
            StopReason.KILLED,
            _clip(f"{signal_name(signum)}, not sent by procguard{hint}{said}"),
            signal=signum,
            by=Ender.OUTSIDE,
        )
    status = returncode
    if status - 128 in STOP_SIGNUMS:
        return StopOutcome(
            StopReason.EXTERNAL_SIGNAL,
            _clip(f"exited {status} after {signal_name(status - 128)} from outside procguard{said}"),
            exit_status=status,
            by=Ender.OUTSIDE,
        )
    known = reason_for_exit_status(status)
    if known is not None:
        return StopOutcome(
            known, _clip(f"exit status {status}{said}"), exit_status=status, by=Ender.PROCGUARD
        )
    if status == 0:
        return StopOutcome(StopReason.COMPLETED, _clip(f"exited 0 on its own{said}"), exit_status=0)
    return StopOutcome(StopReason.CRASHED, _clip(f"exited with status {status}{said}"), exit_status=status)
