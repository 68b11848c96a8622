"""Reading the workers' event logs (see workers/_events.py for the writing side)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Event:
    """One line of a worker's log: what happened, when (monotonic s), to which PID."""

    event: str
    t: float
    pid: int
    role: str
    data: dict[str, object] = field(default_factory=dict)


def parse_line(line: str, role: str) -> Event | None:
    """One JSON line -> Event; a torn or foreign line -> None."""
    try:
        record = json.loads(line)
        event, t, pid = str(record.pop("event")), float(record.pop("t")), int(record.pop("pid"))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return Event(event=event, t=t, pid=pid, role=role, data=record)


def read_events(events_dir: Path) -> list[Event]:
    """All events of all processes in ``events_dir``, oldest first."""
    found: list[Event] = []
    if not events_dir.is_dir():
        return found
    for path in events_dir.glob("*.jsonl"):
        role = path.name.split(".", 1)[0]
        try:
            text = path.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            event = parse_line(line, role)
            if event is not None:
                found.append(event)
    found.sort(key=lambda e: e.t)
    return found


def ready_workers(events: list[Event]) -> dict[int, Event]:
    """PID -> ``ready`` event of each worker (not its children) that became ready."""
    return {e.pid: e for e in events if e.event == "ready" and e.role == "worker"}


def ready_children(events: list[Event]) -> dict[int, Event]:
    """PID -> ``ready`` event of each multiprocessing child."""
    return {e.pid: e for e in events if e.event == "ready" and e.role == "child"}
