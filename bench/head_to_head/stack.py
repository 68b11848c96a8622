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
    """One program: ``count`` copies of ``workers/<script>.py`` with ``args``.

    ``function`` names a function of the script that procguard runs as a
    function worker (``run = "script:function"``, called every
    ``interval_s``); the peers, which have no such mode, run the script's own
    loop, given ``--interval``. ``health`` asks procguard to serve a health
    port for each copy (the ports are in :attr:`Stack.health_ports`).
    """

    name: str
    script: str
    args: tuple[str, ...] = ()
    count: int = 1
    function: str | None = None
    interval_s: float = 1.0
    health: bool = False

    def instance_names(self) -> list[str]:
        """``idle`` for a single copy, ``idle-00`` .. ``idle-49`` for many."""
        if self.count == 1:
            return [self.name]
        return [f"{self.name}-{i:02d}" for i in range(self.count)]


@dataclass(frozen=True)
class Guard:
    """A memory limit on ``programs``, enforced by each tool's own documented mechanism."""

    mode: GuardMode
    limit_mib: int = 200
    programs: tuple[str, ...] = ("leak",)

    def covers(self, spec: WorkerSpec) -> bool:
        return spec.name in self.programs


@dataclass(frozen=True)
class Stack:
    """The workers of one scenario, plus an optional memory guard.

    ``health_ports``: instance name -> the port procguard serves that
    instance's health on (free ports the scenario picked; peers have no
    per-worker health port and ignore it).
    """

    workers: tuple[WorkerSpec, ...]
    guard: Guard | None = None
    env: dict[str, str] = field(default_factory=dict)
    health_ports: dict[str, int] = field(default_factory=dict)


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
        loop = ("--interval", f"{spec.interval_s:g}") if spec.function else ()
        return [self.python, str(self.workers_dir / f"{spec.script}.py"),
                "--events", str(self.events_dir), "--name", instance, *loop, *spec.args]

    def command(self, spec: WorkerSpec, instance: str) -> str:
        """The same, as one shell-quoted string (for config files)."""
        return shlex.join(self.argv(spec, instance))
