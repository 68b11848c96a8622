"""What a scenario asks a manager to run: the same workers, described once for every tool."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

GuardMode = Literal["defaults", "tight"]

WORKERS_DIR = Path(__file__).resolve().parent / "workers"


@dataclass(frozen=True)
class WorkerSpec:
    """One program: ``count`` copies of ``workers/<script>.py`` with ``args``."""

    name: str
    script: str
    args: tuple[str, ...] = ()
    count: int = 1

    def instance_names(self) -> list[str]:
        """``idle`` for a single copy, ``idle-00`` .. ``idle-49`` for many."""
        if self.count == 1:
            return [self.name]
        return [f"{self.name}-{i:02d}" for i in range(self.count)]


@dataclass(frozen=True)
class Guard:
    """A memory limit enforced by each tool's own documented mechanism."""

    mode: GuardMode
    limit_mib: int = 200
    program: str = "leak"


@dataclass(frozen=True)
class Stack:
    """The workers of one scenario, plus an optional memory guard."""

    workers: tuple[WorkerSpec, ...]
    guard: Guard | None = None
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Layout:
    """Where one tool's run keeps its files, and how workers are launched."""

    run_dir: Path
    python: str
    workers_dir: Path = WORKERS_DIR

    @property
    def events_dir(self) -> Path:
        return self.run_dir / "events"

    def argv(self, spec: WorkerSpec, instance: str) -> list[str]:
        """The full command line of one worker instance."""
        return [self.python, str(self.workers_dir / f"{spec.script}.py"),
                "--events", str(self.events_dir), "--name", instance, *spec.args]

    def command(self, spec: WorkerSpec, instance: str) -> str:
        """The same, as one shell-quoted string (for config files)."""
        return shlex.join(self.argv(spec, instance))
