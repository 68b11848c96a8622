"""Records the signals it gets: appends "SIGNAME PID" to FILE for each HUP, USR1 and USR2
(and "ready PID" once its handlers are in place); exits 0 on SIGTERM. Usage: sigrecorder.py FILE"""

import os
import signal
import sys
import time

from _common import append_line

path = sys.argv[1]
stopping = False


def record(signum: int, _frame: object) -> None:
    append_line(path, f"{signal.Signals(signum).name} {os.getpid()}")


def on_term(_signum: int, _frame: object) -> None:
    global stopping
    stopping = True


for recorded in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
    signal.signal(recorded, record)
signal.signal(signal.SIGTERM, on_term)
append_line(path, f"ready {os.getpid()}")
while not stopping:
    time.sleep(0.02)
sys.exit(0)
