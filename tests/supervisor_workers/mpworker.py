"""Starts N multiprocessing children (daemon=True, the kind that outlives a
SIGKILLed parent), then writes "PARENT CHILD..." to FILE and sleeps.
Usage: mpworker.py FILE N"""

import multiprocessing
import os
import sys
import time

from _common import write_atomic


def child() -> None:
    while True:
        time.sleep(1)


if __name__ == "__main__":
    path, count = sys.argv[1], int(sys.argv[2])
    multiprocessing.set_start_method("fork")
    procs = [multiprocessing.Process(target=child, daemon=True) for _ in range(count)]
    for proc in procs:
        proc.start()
    write_atomic(path, " ".join(str(pid) for pid in [os.getpid(), *(p.pid for p in procs)]))
    while True:
        time.sleep(1)
