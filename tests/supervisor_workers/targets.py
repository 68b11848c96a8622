"""Function targets for ``run = "tests.supervisor_workers.targets:NAME"`` workers."""

from __future__ import annotations


def idle() -> None:
    """An iteration that does nothing: the worker then sleeps its interval."""


def write_marker() -> None:
    """Write the marker this worker's children would inherit to the file $MARKER_OUT."""
    import os

    with open(os.environ["MARKER_OUT"], "w") as out:
        out.write(os.environ.get("PROCGUARD_INSTANCE", ""))
