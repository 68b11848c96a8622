"""Event log shared by the benchmark's workers (imported from the script's own folder).

Each process appends JSON lines to ``EVENTS_DIR/<role>.<pid>.jsonl``: when it
became ready, which signal reached it, how much memory it holds. Times are
``time.monotonic()`` (CLOCK_MONOTONIC is system-wide on Linux), so the harness
compares them with its own clock. One ``os.write`` per line on an O_APPEND
descriptor keeps lines whole even when a process is killed mid-run.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from types import FrameType

_fd: int | None = None


def open_log(events_dir: str, role: str) -> None:
    """Open this process's event file (call again in a forked child)."""
    global _fd
    if _fd is not None:
        os.close(_fd)
    path = os.path.join(events_dir, f"{role}.{os.getpid()}.jsonl")
    _fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)


def log(event: str, **fields: object) -> None:
    """Append one event line (no-op before ``open_log``)."""
    if _fd is None:
        return
    record = {"event": event, "t": time.monotonic(), "pid": os.getpid(), **fields}
    os.write(_fd, (json.dumps(record) + "\n").encode())


def rss_bytes() -> int:
    """Resident set size of this process, from /proc (cheap enough for a hot loop)."""
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def on_stop_signals(delay_s: float = 0.0) -> None:
    """SIGTERM/SIGINT: log the signal (the 'graceful' evidence), wait ``delay_s``, exit 0."""

    def handler(signum: int, frame: FrameType | None) -> None:
        log("signal", signum=signum, rss=rss_bytes())
        if delay_s:
            time.sleep(delay_s)
        log("exit", graceful=True)
        os._exit(0)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def parse_common(argv: list[str]) -> dict[str, str]:
    """``--key value`` pairs; every worker takes ``--events DIR`` and ``--name NAME``."""
    args: dict[str, str] = {}
    it = iter(argv)
    for item in it:
        if not item.startswith("--"):
            sys.exit(f"unexpected argument {item!r}")
        args[item[2:]] = next(it, "")
    if "events" not in args:
        sys.exit("--events DIR is required")
    return args


def sleep_forever() -> None:
    """Idle without polling: wake only for signals."""
    while True:
        signal.pause()
