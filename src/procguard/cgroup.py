"""The cgroup memory limit this process runs under (v2 ``memory.max``, v1 ``memory.limit_in_bytes``).

Why it matters: when the kernel's limit is below procguard's soft limit,
the kernel OOM-kills the worker with SIGKILL before procguard can stop it
gracefully, so the soft limit would never act. :func:`soft_limit_warning`
says so; the manager logs it at start.

The readers take the filesystem roots as parameters so that tests can feed
recorded files; nothing here raises on a missing or odd cgroup setup (no
cgroup, a container with a private namespace, macOS): the answer is then
``None``, "no limit known".
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

#: Values at or above this mean "unlimited" (v1 reports PAGE_COUNTER_MAX, ~2**63).
_UNLIMITED = 2**60


def _parse_limit(text: str) -> int | None:
    text = text.strip()
    if not text or text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return None if value >= _UNLIMITED or value <= 0 else value


def _read_limit(path: Path) -> int | None:
    try:
        return _parse_limit(path.read_text())
    except OSError:
        return None


def _candidates(mount: Path, rel: str) -> list[Path]:
    """The cgroup directory and its ancestors up to the mount (the effective limit is the smallest)."""
    rel = rel.strip().lstrip("/")
    dirs: list[Path] = []
    parts = [p for p in rel.split("/") if p]
    while True:
        dirs.append(mount.joinpath(*parts) if parts else mount)
        if not parts:
            break
        parts.pop()
    return dirs


def memory_limit_bytes(
    pid: int | str = "self",
    *,
    proc_root: str | os.PathLike[str] = "/proc",
    cgroup_root: str | os.PathLike[str] = "/sys/fs/cgroup",
) -> int | None:
    """The smallest memory limit of the cgroup of ``pid`` and its ancestors, or ``None``.

    cgroup v2: ``<root>/<path>/memory.max``; v1: ``<root>/memory/<path>/memory.limit_in_bytes``.
    In a container the path in ``/proc/<pid>/cgroup`` may not exist under the
    mount (private namespace); the mount's own files are then read.
    """
    root = Path(cgroup_root)
    try:
        lines = Path(proc_root, str(pid), "cgroup").read_text().splitlines()
    except OSError:
        return None
    limits: list[int] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _hid, controllers, rel = parts
        if controllers == "":  # v2 unified hierarchy
            mount = root if (root / "cgroup.controllers").exists() else root / "unified"
            filename = "memory.max"
        elif "memory" in controllers.split(","):
            mount = root / "memory"
            filename = "memory.limit_in_bytes"
        else:
            continue
        for directory in _candidates(mount, rel):
            value = _read_limit(directory / filename)
            if value is not None:
                limits.append(value)
    return min(limits) if limits else None


def soft_limit_warning(soft_bytes: int | None, cgroup_bytes: int | None) -> str | None:
    """A warning text when the soft limit is at or above the cgroup limit, else None."""
    if not soft_bytes or not cgroup_bytes or soft_bytes < cgroup_bytes:
        return None
    mb = 1024 * 1024
    return (
        f"memory limit {soft_bytes / mb:.0f} MB is not below this process's cgroup limit "
        f"{cgroup_bytes / mb:.0f} MB: the kernel would SIGKILL the worker before procguard "
        "could stop it gracefully (set the memory limit below the cgroup limit)"
    )
