"""A ProcessManager worker for the tracing tests, run as a real child process.

Usage: ``python tests/manager_workers/traced.py '<json config>'``. Tracing is
switched on by the environment the test gives it (``OTEL_*``) or by
``kwargs: {"otel": true}``. It never imports OpenTelemetry itself unless
``user_span`` asks for the program's own span in each iteration. At the end
it writes one JSON line to ``config["out"]``: iterations, exit status,
reason, the ``PROCGUARD_INSTANCE`` marker it ran with, the modules of
OpenTelemetry that were loaded.

Config keys (all optional except ``out``):

- ``kwargs``: ProcessManager keyword arguments;
- ``mode``: ``"sync"`` (default), ``"async"`` (``async with``, ``sleep_async``)
  or ``"raise"`` (a ``with`` block whose loop raises at ``raise_at``);
- ``user_span``: open a span ``user.work`` inside each iteration;
- ``leak_mb``: MB leaked (touched, resident) per iteration;
- ``fail_at``: iteration that calls ``record_failure``;
- ``iteration_s`` / ``sleep_s``: work per iteration (time.sleep) / manager.sleep between.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time

from procguard.manager import ProcessManager

CONFIG = json.loads(sys.argv[1])
LEAK: list[bytes] = []
SEEN: dict[str, str] = {}  # the marker while running (the manager withdraws it at shutdown)


def work(manager: ProcessManager) -> None:
    SEEN.setdefault("marker", os.environ.get("PROCGUARD_INSTANCE", ""))
    i = manager.iterations
    if CONFIG.get("user_span"):
        from opentelemetry import trace

        with trace.get_tracer("traced-worker").start_as_current_span("user.work") as span:
            span.set_attribute("user.iteration", i)
            _work(manager, i)
    else:
        _work(manager, i)


def _work(manager: ProcessManager, i: int) -> None:
    if CONFIG.get("iteration_s"):
        time.sleep(CONFIG["iteration_s"])
    if CONFIG.get("leak_mb"):
        LEAK.append(b"\x01" * int(CONFIG["leak_mb"] * 1024 * 1024))
    if CONFIG.get("fail_at") == i:
        manager.record_failure(RuntimeError(f"iteration {i} failed on purpose"))
    if CONFIG.get("raise_at") == i:
        raise RuntimeError("the work loop fails on purpose")


def run_sync(manager: ProcessManager) -> int:
    manager.start()
    while manager.should_continue():
        manager.heartbeat()
        work(manager)
        if CONFIG.get("sleep_s"):
            manager.sleep(CONFIG["sleep_s"])
    return manager.shutdown()


def run_raise(manager: ProcessManager) -> int:
    try:
        with manager:
            while manager.should_continue():
                manager.heartbeat()
                work(manager)
    except RuntimeError:
        pass
    return manager.exit_status


async def run_async(manager: ProcessManager) -> int:
    async with manager:
        while manager.should_continue():
            manager.heartbeat()
            SEEN.setdefault("marker", os.environ.get("PROCGUARD_INSTANCE", ""))
            if CONFIG.get("user_span"):
                from opentelemetry import trace

                with trace.get_tracer("traced-worker").start_as_current_span("user.work"):
                    await asyncio.sleep(CONFIG.get("iteration_s", 0.0))
            await manager.sleep_async(CONFIG.get("sleep_s", 0.0))
    return manager.exit_status


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    manager = ProcessManager(**CONFIG.get("kwargs", {}))
    mode = CONFIG.get("mode", "sync")
    if mode == "async":
        status = asyncio.run(run_async(manager))
    elif mode == "raise":
        status = run_raise(manager)
    else:
        status = run_sync(manager)
    result = {
        "iterations": manager.iterations,
        "status": status,
        "reason": str(manager.stop_reason),
        "marker": SEEN.get("marker", ""),
        "otel_modules": sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry"),
    }
    with open(CONFIG["out"], "w") as f:
        f.write(json.dumps(result) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
