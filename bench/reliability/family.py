"""A worker that leaves a family behind if nobody stops it: the orphan rows' workload.

Two ``multiprocessing`` children (fork; one ``daemon=True``, which Python
does not stop when its parent is SIGKILLed), with ``--spawn`` a third one
started by the spawn method (it brings multiprocessing's resource tracker
along), and a double-forked grandchild that calls ``setsid`` in between:
it leaves both the process tree and the session, as a daemonizing helper
does. Once all are running, every member goes into OUT (written
atomically) as ``[pid, what it is]`` pairs.

Runs as a command (``python family.py OUT [--spawn]``) or as a function
target (``bench.reliability.family:spawn_family``, OUT from
``$RELIABILITY_FAMILY_OUT``), which spawns the family on its first
iteration and returns.

Standard library only: the command runs without procguard installed.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
from typing import Any

OUT_ENV = "RELIABILITY_FAMILY_OUT"


def _sleep() -> None:
    time.sleep(3600)


def _escapee(path: str) -> None:
    """Fork, setsid, fork again: the grandchild writes its PID and sleeps; nobody waits for it."""
    if os.fork():
        os._exit(0)
    os.setsid()
    if os.fork():
        os._exit(0)
    with open(path + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(path + ".tmp", path)
    time.sleep(3600)
    os._exit(0)


WORKER, FORKED, SPAWNED, ESCAPEE = ("worker", "multiprocessing child", "spawn-method child",
                                    "double-forked grandchild")


def start_family(out: str, *, spawn_method: bool = False) -> list[tuple[int, str]]:
    """Start the family, write ``[pid, what]`` of every member to ``out``; return them."""
    fork = multiprocessing.get_context("fork")
    kids: list[tuple[Any, str]] = [(fork.Process(target=_sleep, daemon=True), FORKED),
                                   (fork.Process(target=_sleep), FORKED)]
    if spawn_method:
        kids.append((multiprocessing.get_context("spawn").Process(target=_sleep, daemon=True), SPAWNED))
    for kid, _what in kids:
        kid.start()
    escapee_file = out + ".escapee"
    middle = os.fork()
    if middle == 0:
        try:
            _escapee(escapee_file)
        finally:
            os._exit(0)
    os.waitpid(middle, 0)
    deadline = time.monotonic() + 30
    while not os.path.exists(escapee_file):
        if time.monotonic() > deadline:
            msg = "the double-forked grandchild never wrote its PID"
            raise RuntimeError(msg)
        time.sleep(0.005)
    with open(escapee_file) as f:
        escapee = int(f.read())
    members = [(os.getpid(), WORKER), *((kid.pid, what) for kid, what in kids), (escapee, ESCAPEE)]
    with open(out + ".tmp", "w") as f:
        json.dump(members, f)
    os.rename(out + ".tmp", out)
    return members


_started = False


def spawn_family() -> None:
    """Function target: the first iteration starts the family; later ones do nothing."""
    global _started
    if not _started:
        _started = True
        start_family(os.environ[OUT_ENV])


if __name__ == "__main__":
    start_family(sys.argv[1], spawn_method="--spawn" in sys.argv[2:])
    time.sleep(3600)
