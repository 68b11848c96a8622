"""A periodic job (the real-stack scenario's function worker): ``tick()`` does one unit of work.

Under ``procguard up`` it is a function worker (``run = "ticker:tick"``,
``interval``): procguard's runner imports this module and calls ``tick()``
every interval in its own process, so that process is the worker. The peers
run the same loop as a program (``python ticker.py --events DIR --interval
S``): call ``tick()``, sleep, again, until SIGTERM/SIGINT. Either way the
process logs ``ready`` once, on its first tick; under procguard the event
folder and name come from ``BENCH_EVENTS`` and ``BENCH_NAME``.
"""

from __future__ import annotations

import os
import sys
import time

import _events as ev

_ready = False


def tick() -> None:
    """One unit of work: sum some numbers and touch a small buffer (the job's data)."""
    global _ready
    if not _ready:
        ev.open_log(os.environ["BENCH_EVENTS"], "worker")
        ev.log("ready", name=os.environ.get("BENCH_NAME", ""))
        _ready = True
    buffer = bytearray(64 * 1024)
    buffer[::4096] = b"\x01" * len(buffer[::4096])
    sum(range(10_000))


if __name__ == "__main__":
    args = ev.parse_common(sys.argv[1:])
    os.environ["BENCH_EVENTS"] = args["events"]
    os.environ["BENCH_NAME"] = args.get("name", "")
    interval = float(args.get("interval", "1"))
    ev.on_stop_signals()
    while True:
        tick()
        time.sleep(interval)
