"""What re-reading procguard.toml changes in a running stack: a pure comparison of two configs.

``procguard reload`` (and SIGHUP to the supervisor) read the file again and
hand the old and the new :class:`~procguard.config.StackConfig` to
:func:`plan_reload`, which says, worker by worker, what is ``added``,
``removed``, ``changed`` (and which keys, with their old and new values as
procguard.toml spells them) and ``unchanged``. The supervisor then carries
the plan out (:mod:`.reload`).

Some settings belong to the running supervisor itself and cannot change
under it: the project name (its lock, socket and logs are named after it)
and the status page's address (already bound). A new file that changes one
of them is refused as a whole (:class:`UsageError` naming the key), so a
reload never half-applies. The state directory is not in the file: it is
the one the supervisor runs on. ``[deploy.*]`` tables do not concern a
running stack and are not compared.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..config import StackConfig, WorkerConfig
from ..errors import UsageError
from ..limits import SETTINGS, format_seconds

#: ``[project]`` keys a running supervisor cannot take on: (key, field of ProjectConfig).
FIXED_PROJECT_KEYS: tuple[tuple[str, str], ...] = (
    ("name", "name"),
    ("status_port", "status_port"),
    ("status_host", "status_host"),
)

#: The stack's own worker keys compared by a reload: procguard.toml key -> WorkerConfig field.
_STACK_FIELDS: dict[str, str] = {
    "run": "run",
    "command": "command",
    "args": "args",
    "env": "env",
    "env_file": "env_file",
    "cwd": "cwd",
    "restart": "restart",
    "backoff_initial": "backoff_initial_s",
    "backoff_max": "backoff_max_s",
    "backoff_reset": "backoff_reset_s",
    "start_limit": "start_limit",
    "start_limit_interval": "start_limit_interval_s",
    "depends_on": "depends_on",
    "instances": "instances",
    "autoscale": "autoscale",
    "user": "user",
    "group": "group",
    "umask": "umask",
}

_DURATION_FIELDS = frozenset(
    {"backoff_initial_s", "backoff_max_s", "backoff_reset_s", "start_limit_interval_s"}
)


@dataclass(frozen=True)
class Change:
    """One key of a worker that differs: its procguard.toml name and both values as text."""

    key: str
    old: str
    new: str

    def __str__(self) -> str:
        if not self.old:  # a summary with no "before" (the environment: names only)
            return f"{self.key} {self.new}"
        return f"{self.key} {self.old} -> {self.new}"


@dataclass(frozen=True)
class ReloadPlan:
    """What a reload does; each list in the new file's order (``removed`` in the old file's)."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: dict[str, list[Change]] = field(default_factory=dict)
    unchanged: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed)


def _text(field_name: str, value: Any) -> str:
    """A stack key's value as a person reads it (never an environment value: they may be secrets)."""
    if value is None:
        return "none"
    if field_name in _DURATION_FIELDS:
        return format_seconds(float(value))
    if field_name in ("command", "args"):
        return shlex.join(value) if value else "[]"
    if field_name == "depends_on":
        if "ready" in value.values():
            return "{ " + ", ".join(f'{name} = "{value[name]}"' for name in value) + " }"
        return "[" + ", ".join(value) + "]"
    if field_name == "autoscale":
        return f"{value.min}..{value.max} on {value.metric} target {value.target:g}"
    if field_name == "env_file":
        return "[" + ", ".join(value) + "]"
    if field_name == "umask" and value is not None:
        return f"{value:03o}"
    return str(value)


def _env_changes(old: Mapping[str, str], new: Mapping[str, str]) -> list[Change]:
    """The environment variables that differ, by name only: their values stay out of logs and output."""
    names = sorted({*old, *new})
    differ = [n for n in names if old.get(n) != new.get(n)]
    if not differ:
        return []
    added = [n for n in differ if n not in old]
    removed = [n for n in differ if n not in new]
    changed = [n for n in differ if n in old and n in new]
    parts = [f"{label} {', '.join(group)}" for label, group in
             (("set", added), ("unset", removed), ("changed", changed)) if group]
    return [Change("env", "", "; ".join(parts))]


def worker_changes(old: WorkerConfig, new: WorkerConfig) -> list[Change]:
    """The keys that differ between two versions of one worker (empty: unchanged)."""
    changes: list[Change] = []
    for key, name in _STACK_FIELDS.items():
        before, after = getattr(old, name), getattr(new, name)
        if before == after:
            continue
        if key == "env":
            changes += _env_changes(before, after)
        else:
            changes.append(Change(key, _text(name, before), _text(name, after)))
    for setting in SETTINGS:
        before, after = getattr(old.limits, setting.field), getattr(new.limits, setting.field)
        if before != after:
            shown_before = "none" if before is None else setting.format(before)
            shown_after = "none" if after is None else setting.format(after)
            changes.append(Change(setting.key, shown_before, shown_after))
    return changes


def check_fixed(old: StackConfig, new: StackConfig, *, keep: Iterable[str] = ()) -> None:
    """UsageError naming the first ``[project]`` key the running supervisor cannot change.

    ``keep`` names keys whose file value is not in use (``status_port`` when
    ``up --status-port`` set the port): they may change freely.
    """
    skipped = set(keep)
    for key, name in FIXED_PROJECT_KEYS:
        if key in skipped:
            continue
        before, after = getattr(old.project, name), getattr(new.project, name)
        if before != after:
            msg = (
                f"{new.path}: project.{key} changed ({before!s} -> {after!s}); it cannot change while "
                "the stack runs: nothing was applied (restore it, or 'procguard down' then 'up')"
            )
            raise UsageError(msg)


def plan_reload(old: StackConfig, new: StackConfig, *, keep: Iterable[str] = ()) -> ReloadPlan:
    """Compare the running config with the new one; UsageError if a fixed setting changed."""
    check_fixed(old, new, keep=keep)
    plan = ReloadPlan()
    for name, worker in new.workers.items():
        if name not in old.workers:
            plan.added.append(name)
            continue
        changes = worker_changes(old.workers[name], worker)
        if changes:
            plan.changed[name] = changes
        else:
            plan.unchanged.append(name)
    plan.removed.extend(name for name in old.workers if name not in new.workers)
    return plan
