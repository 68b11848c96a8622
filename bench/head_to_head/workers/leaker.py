"""A worker leaking memory at a steady rate (20 MB/s by default) until stopped.

After a random delay (``--delay-max`` s, so the leak starts at a random point
of the manager's check timer) it adds ``--step-mb`` every ``--step-s`` and
writes its RSS after each step; the first step above ``--limit-mb`` is logged
as ``cross``. SIGTERM/SIGINT are logged, and the handler takes ``--stop-s``
(0.2 s) to finish before logging ``exit``: a stop is graceful only if that
line is written. A SIGKILL leaves only the last ``rss`` line. Growth stops at ``--cap-mb`` to protect the machine.
"""

from __future__ import annotations

import random
import sys
import time

import _events as ev

MIB = 1024 * 1024

if __name__ == "__main__":
    args = ev.parse_common(sys.argv[1:])
    ev.open_log(args["events"], "worker")
    # Finishing the in-flight work takes a moment: a stop is graceful only if this completes.
    ev.on_stop_signals(delay_s=float(args.get("stop-s", "0.2")))
    limit = float(args.get("limit-mb", "200")) * MIB
    step = int(float(args.get("step-mb", "2")) * MIB)
    step_s = float(args.get("step-s", "0.1"))
    cap = float(args.get("cap-mb", "3072")) * MIB
    delay = random.uniform(0.0, float(args.get("delay-max", "0")))
    ev.log("ready", name=args.get("name", ""), delay=delay)
    time.sleep(delay)
    hoard: list[bytes] = []
    crossed = False
    next_t = time.monotonic()
    ev.log("leak_start", rss=ev.rss_bytes())
    while True:
        rss = ev.rss_bytes()
        if rss < cap:
            hoard.append(b"\x01" * step)  # filled, so every page is resident
            rss = ev.rss_bytes()
        ev.log("rss", rss=rss)
        if not crossed and rss > limit:
            crossed = True
            ev.log("cross", rss=rss)
        next_t += step_s
        time.sleep(max(0.0, next_t - time.monotonic()))
