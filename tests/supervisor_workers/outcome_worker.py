"""One misbehaviour on demand, in every way procguard runs a worker (the stop-outcome matrix).

As a program: ``outcome_worker.py STYLE EVENT RECORD`` where STYLE is
``plain`` (knows nothing of procguard) or ``library`` (its loop runs under a
ProcessManager, with ``--memory-limit``/``--max-runtime``/
``--heartbeat-timeout`` given after RECORD); as a ``run =`` target:
``outcome_worker:step`` with ``OUTCOME_EVENT`` and ``OUTCOME_RECORD`` in the
environment. Each writes ``start PID`` to RECORD once running, then:

- ``leak``: grows 20 MB/s from 30 MB (a graceful recycle at the limit);
- ``burst``: takes 3 x the memory limit at once (past the hard ceiling);
- ``hang``: one iteration that never beats (heartbeat timeout);
- ``crash``: exits with status 3 on its own;
- ``idle``: does nothing until stopped (max runtime, signals, an operator).

``leak:N`` leaks only in its first N runs (counted in RECORD), then idles: a
run of exactly N recycles.
"""

from __future__ import annotations

import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import append_line

MIB = 1024 * 1024
_hoard: list[bytes] = []


def _misbehave(event: str, limit_mb: int, stopping: object) -> None:
    """One step of EVENT (a fraction of a second); ``stopping()`` is True once a stop was asked."""
    if event == "leak":
        if not _hoard:
            _hoard.append(b"\x01" * (30 * MIB))
        _hoard.append(b"\x01" * MIB)
        time.sleep(0.05)
    elif event == "burst":
        if not _hoard:
            _hoard.append(b"\x01" * (3 * limit_mb * MIB))
        time.sleep(0.05)
    elif event == "hang":
        while not stopping():  # type: ignore[operator]
            time.sleep(0.05)  # no heartbeat, no progress: stuck as far as procguard can tell
    elif event == "crash":
        time.sleep(0.3)
        sys.exit(3)
    else:
        time.sleep(0.05)


def step(manager: object) -> None:
    """``run =`` target: one iteration of OUTCOME_EVENT."""
    event = os.environ["OUTCOME_EVENT"]
    record = os.environ["OUTCOME_RECORD"]
    if not os.environ.get("_OUTCOME_STARTED"):
        os.environ["_OUTCOME_STARTED"] = "1"
        append_line(record, f"start {os.getpid()}")
    limit = getattr(manager, "limits").memory_limit_bytes // MIB  # noqa: B009
    _misbehave(event, limit, lambda: getattr(manager, "is_stopping"))  # noqa: B009


def _plain(event: str, record: str, limit_mb: int) -> None:
    """A program that knows nothing of procguard; a stop signal ends it as the convention says: 128 + N."""
    stop: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _frame: stop.append(signum))
    event, _, runs = event.partition(":")
    if runs and os.path.exists(record):
        with open(record) as handle:
            if sum(1 for line in handle if line.startswith("start")) >= int(runs):
                event = "idle"
    append_line(record, f"start {os.getpid()}")
    while not stop:
        _misbehave(event, limit_mb, lambda: bool(stop))
    sys.exit(128 + stop[0])


def _library(event: str, record: str, argv: list[str]) -> None:
    import argparse
    import logging

    from procguard import ProcessManager, add_lifecycle_arguments

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser()
    add_lifecycle_arguments(parser)
    parser.add_argument("--heartbeat-timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    manager = ProcessManager.from_args(args, heartbeat_timeout_s=args.heartbeat_timeout)
    limit = (manager.limits.memory_limit_bytes or 0) // MIB
    with manager:
        append_line(record, f"start {os.getpid()}")
        while manager.should_continue():
            if event != "hang":
                manager.heartbeat()
            _misbehave(event, limit, lambda: manager.is_stopping)
    sys.exit(manager.exit_status)


if __name__ == "__main__":
    style, event, record, *rest = sys.argv[1:]
    if style == "plain":
        _plain(event, record, int(rest[0]) if rest else 100)
    else:
        _library(event, record, rest)
