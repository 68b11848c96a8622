"""A configurable worker under ProcessManager, run as a real child process by the tests.

Usage: ``python tests/manager_workers/worker.py '<json config>'``. It appends
one line per event to ``config["out"]`` (``started``, ``begin N ready=R``,
``end N``, ``cleanup ...``, ``children PID...``, ``exit STATUS REASON``), so a
test can wait for an exact state instead of sleeping.

Config keys (all optional except ``out``):

- ``kwargs``: ProcessManager keyword arguments;
- ``mode``: ``"sync"`` (default), ``"async"`` or ``"with"`` (a ``with`` block);
- ``iteration_s``: seconds of in-flight work per iteration (time.sleep, or a
  busy loop with ``burn``);
- ``sleep_s``: manager.sleep / sleep_async between iterations;
- ``leak_mb``: MB leaked (touched, resident) per iteration;
- ``block_at`` / ``block_s``: at iteration N, work ``block_s`` seconds without heartbeat;
- ``cleanups``: register callbacks 1 (sync), 2 (raises), 3 (async), 4 (sync, slow);
- ``mp_children``: start N multiprocessing children that sleep forever;
- ``request_stop_at``: call request_stop() at iteration N;
- ``fail``: every iteration calls record_failure();
- ``skip_shutdown``: end the program without calling shutdown().
"""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import sys
import time

from procguard.errors import ProcguardError
from procguard.manager import ProcessManager

CONFIG = json.loads(sys.argv[1])
OUT = CONFIG["out"]
LEAK: list[bytes] = []


def emit(line: str) -> None:
    with open(OUT, "a") as f:
        f.write(line + "\n")


def sleep_forever() -> None:
    while True:
        time.sleep(60)


def work(manager: ProcessManager, i: int) -> None:
    emit(f"begin {i} ready={int(manager.readiness().is_healthy)}")
    if CONFIG.get("request_stop_at") == i:
        manager.request_stop()
    if CONFIG.get("block_at") == i:
        time.sleep(CONFIG["block_s"])  # a long step with no heartbeat
    seconds = CONFIG.get("iteration_s", 0.0)
    if CONFIG.get("burn"):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            manager.heartbeat()
    elif seconds:
        time.sleep(seconds)
    leak = CONFIG.get("leak_mb", 0)
    if leak:
        LEAK.append(b"\x01" * int(leak * 1024 * 1024))
    if CONFIG.get("fail"):
        manager.record_failure(RuntimeError(f"iteration {i} failed"))
    emit(f"end {i}")


def register_cleanups(manager: ProcessManager) -> None:
    if not CONFIG.get("cleanups"):
        return

    def first() -> None:
        emit("cleanup 1")

    def second() -> None:
        emit("cleanup 2")
        raise RuntimeError("cleanup 2 fails on purpose")

    async def third() -> None:
        await asyncio.sleep(0.01)
        emit("cleanup 3")

    def fourth() -> None:
        emit("cleanup 4 start")
        time.sleep(30)  # longer than cleanup_timeout_s: abandoned
        emit("cleanup 4 end")

    manager.add_cleanup(first)
    manager.add_cleanup(second)
    manager.add_cleanup(third)
    if CONFIG.get("slow_cleanup"):
        manager.add_cleanup(fourth)


def start_children(manager: ProcessManager) -> None:
    count = CONFIG.get("mp_children", 0)
    if not count:
        return
    procs = [multiprocessing.Process(target=sleep_forever) for _ in range(count)]
    for p in procs:
        p.start()
    emit("children " + " ".join(str(p.pid) for p in procs))


def run_sync(manager: ProcessManager) -> int:
    manager.start()
    register_cleanups(manager)
    start_children(manager)
    emit("started")
    while manager.should_continue():
        manager.heartbeat()
        work(manager, manager.iterations)
        if CONFIG.get("sleep_s"):
            manager.sleep(CONFIG["sleep_s"])
    if CONFIG.get("skip_shutdown"):  # forgetting shutdown(): the atexit hook must still clean up
        emit(f"exit {manager.exit_status} {manager.stop_reason}")
        sys.exit(0)
    return manager.shutdown()


def run_with(manager: ProcessManager) -> int:
    with manager:
        register_cleanups(manager)
        start_children(manager)
        emit("started")
        while manager.should_continue():
            manager.heartbeat()
            work(manager, manager.iterations)
            if CONFIG.get("sleep_s"):
                manager.sleep(CONFIG["sleep_s"])
            if CONFIG.get("raise_at") == manager.iterations:
                raise RuntimeError("the work loop fails on purpose")
    return manager.exit_status


async def run_async(manager: ProcessManager) -> int:
    async with manager:
        register_cleanups(manager)
        start_children(manager)
        emit("started")
        while manager.should_continue():
            manager.heartbeat()
            emit(f"begin {manager.iterations} ready={int(manager.readiness().is_healthy)}")
            await asyncio.sleep(CONFIG.get("iteration_s", 0.0))
            emit(f"end {manager.iterations}")
            if CONFIG.get("sleep_s"):
                await manager.sleep_async(CONFIG["sleep_s"])
    return manager.exit_status


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        manager = ProcessManager(**CONFIG.get("kwargs", {}))
        mode = CONFIG.get("mode", "sync")
        if mode == "async":
            status = asyncio.run(run_async(manager))
        elif mode == "with":
            try:
                status = run_with(manager)
            except RuntimeError:
                status = manager.exit_status
        else:
            status = run_sync(manager)
    except ProcguardError as error:
        emit(f"error {error.exit_status} {error}")
        return int(error.exit_status)
    emit(f"exit {status} {manager.stop_reason}")
    return status


if __name__ == "__main__":
    sys.exit(main())
