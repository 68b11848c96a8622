"""Function targets for ``run = "tests.supervisor_workers.targets:NAME"`` workers."""

from __future__ import annotations


def idle() -> None:
    """An iteration that does nothing: the worker then sleeps its interval."""


def write_marker() -> None:
    """Write the marker this worker's children would inherit to the file $MARKER_OUT."""
    import os

    with open(os.environ["MARKER_OUT"], "w") as out:
        out.write(os.environ.get("PROCGUARD_INSTANCE", ""))


def write_copy_env() -> None:
    """Write this copy's pid and copy variables to $COPY_DIR/fn-K (K: its PROCGUARD_INSTANCE_INDEX)."""
    import json
    import os

    index = os.environ.get("PROCGUARD_INSTANCE_INDEX", "?")
    facts = {k: os.environ.get(k) for k in ("PROCGUARD_INSTANCE_INDEX", "PROCGUARD_INSTANCES", "PROCGUARD_INSTANCE")}
    facts["pid"] = str(os.getpid())
    path = os.path.join(os.environ["COPY_DIR"], f"fn-{index}")
    with open(f"{path}.tmp", "w") as out:
        out.write(json.dumps(facts))
    os.replace(f"{path}.tmp", path)


def publish_gauge(manager) -> None:
    """Publish the gauge $GAUGE_NAME: copy 1 the number in $GAUGE_FILE, the other copies 0 (so the
    copies' sum is the file's number)."""
    import os

    first = os.environ.get("PROCGUARD_INSTANCE_INDEX", "1") == "1"
    with open(os.environ["GAUGE_FILE"]) as source:
        value = float(source.read().strip() or 0) if first else 0.0
    manager.set_gauge(os.environ.get("GAUGE_NAME", "queue_depth"), value)
