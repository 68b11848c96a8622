"""Records which signal stopped it: appends "ready PID" once its handlers are in place, then
"stopped by SIGNAME" for the first of TERM, INT, QUIT, HUP, USR1, USR2, and exits 0.
Usage: stopsig.py FILE"""

import os
import signal
import sys
import time

from _common import append_line

path = sys.argv[1]
got: list[int] = []


def on_signal(signum: int, _frame: object) -> None:
    got.append(signum)


for caught in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
    signal.signal(caught, on_signal)
append_line(path, f"ready {os.getpid()}")
while not got:
    time.sleep(0.02)
append_line(path, f"stopped by {signal.Signals(got[0]).name}")
sys.exit(0)
