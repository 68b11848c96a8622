"""Function targets for ``run = "tests.supervisor_workers.targets:NAME"`` workers."""

from __future__ import annotations


def idle() -> None:
    """An iteration that does nothing: the worker then sleeps its interval."""
