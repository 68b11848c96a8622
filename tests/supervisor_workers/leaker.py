"""Leaks RATE MB/s on top of BASE MB until stopped; records what it went through in FILE.

Usage: leaker.py FILE BASE_MB RATE_MB_S STOP_S [LIMIT_MB]

Writes ``start PID`` once running. On SIGTERM it finishes its in-flight
work for STOP_S seconds (still leaking, as a real worker would), then writes
``term PID PEAK_RSS_BYTES`` and exits 0: that line exists only if the stop
was graceful. PEAK_RSS_BYTES is the highest RSS it read of itself, every
step, so it is the true peak, not the supervisor's sampled one. Growth stops
at 1 GiB to protect the machine. With LIMIT_MB it also writes ``cross PID T``
when its RSS first read over LIMIT_MB and ``sigterm PID T`` when SIGTERM came
(``time.monotonic()``, the same clock in every process).
"""

import os
import signal
import sys
import time

from _common import append_line

path, base_mb, rate_mb_s, stop_s = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
MIB = 1024 * 1024
limit = float(sys.argv[5]) * MIB if len(sys.argv) > 5 else None
STEP_S = 0.05
PAGE = os.sysconf("SC_PAGE_SIZE")
stop_asked_at: float | None = None


def rss_bytes() -> int:
    with open("/proc/self/statm", "rb") as handle:
        return int(handle.read().split()[1]) * PAGE


def on_term(_signum: int, _frame: object) -> None:
    global stop_asked_at
    if stop_asked_at is None:
        stop_asked_at = time.monotonic()
        if limit is not None:
            append_line(path, f"sigterm {os.getpid()} {stop_asked_at:.6f}")


signal.signal(signal.SIGTERM, on_term)
hoard = [b"\x01" * (base_mb * MIB)]
peak = rss_bytes()
append_line(path, f"start {os.getpid()}")
step = int(rate_mb_s * MIB * STEP_S)
next_t = time.monotonic()
while stop_asked_at is None or time.monotonic() - stop_asked_at < stop_s:
    if peak < 1024 * MIB:
        hoard.append(b"\x01" * step)  # filled, so every page is resident
    rss = rss_bytes()
    if limit is not None and peak <= limit < rss:
        append_line(path, f"cross {os.getpid()} {time.monotonic():.6f}")
    peak = max(peak, rss)
    next_t += STEP_S
    time.sleep(max(0.0, next_t - time.monotonic()))
append_line(path, f"term {os.getpid()} {peak}")
sys.exit(0)
