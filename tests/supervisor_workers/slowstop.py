"""Writes its pid to FILE; on SIGTERM takes DELAY_S to stop, then exits 0.
With DELAY_S < 0 it ignores SIGTERM altogether. Usage: slowstop.py FILE DELAY_S"""

import os
import signal
import sys
import time

from _common import append_line

path, delay = sys.argv[1], float(sys.argv[2])
stopping = False


def on_term(_signum: int, _frame: object) -> None:
    global stopping
    stopping = True


signal.signal(signal.SIGTERM, signal.SIG_IGN if delay < 0 else on_term)
append_line(path, str(os.getpid()))
while not stopping:
    time.sleep(0.02)
time.sleep(delay)
sys.exit(0)
