"""Production hand-off: systemd units, a supervisord group, Kubernetes Deployments.

``render(target, config, settings, ...)`` is a pure function from the
validated :class:`~procguard.config.StackConfig` to
:class:`~procguard.deploy.writer.RenderedFile` records; it checks the
timeout/memory budget first (:mod:`procguard.deploy.budget`).
:func:`~procguard.deploy.writer.write_files` is the one place that writes.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

from ..config import StackConfig
from .budget import enforce_budget
from .settings import KEYS, parse_target_settings
from .writer import RenderedFile, write_files

TARGETS: tuple[str, ...] = ("systemd", "supervisor", "kubernetes")


def all_settings(config: StackConfig, flags: Mapping[str, object] | None = None) -> dict[str, dict[str, Any]]:
    """Validated settings of every target (flags applied to the targets they concern)."""
    return {target: parse_target_settings(config, target, flags) for target in KEYS}


def local_procguard(venv: str | None) -> list[str]:
    """How a host engine starts procguard: the venv's python, else the interpreter in use."""
    python = f"{venv}/bin/python" if venv else sys.executable
    return [python, "-m", "procguard"]


def host_paths(
    target: str,
    config: StackConfig,
    settings: Mapping[str, Mapping[str, Any]],
    *,
    workdir: str | None = None,
    procguard: Sequence[str] | None = None,
) -> tuple[str, list[str]]:
    """A host engine's working directory (the config's, unless told) and how it starts procguard."""
    own = settings.get(target, {})
    base = workdir or own.get("workdir") or str(config.path.parent)
    return base, list(procguard) if procguard else local_procguard(own.get("venv"))


def render(
    target: str,
    config: StackConfig,
    settings: Mapping[str, Mapping[str, Any]],
    *,
    workdir: str | None = None,
    procguard: Sequence[str] | None = None,
) -> list[RenderedFile]:
    """Render ``target``'s files for ``config`` (pure); raises BudgetError/UsageError."""
    enforce_budget(config, settings)
    base, command = host_paths(target, config, settings, workdir=workdir, procguard=procguard)
    if target == "kubernetes":
        from .kubernetes import render_kubernetes

        return render_kubernetes(config, settings)
    if target == "systemd":
        from .systemd import render_systemd

        return render_systemd(config, settings, procguard=command, workdir=base)
    if target == "supervisor":
        from .supervisord import render_supervisor

        return render_supervisor(config, settings, procguard=command, workdir=base)
    msg = f"unknown deploy target {target!r} (use one of: {', '.join(TARGETS)})"
    raise ValueError(msg)


__all__ = [
    "TARGETS",
    "RenderedFile",
    "all_settings",
    "host_paths",
    "local_procguard",
    "render",
    "write_files",
]
