"""Appends "tick PID" to FILE every 0.1 s; prints a line too. Usage: ticker.py FILE"""

import os
import sys
import time

from _common import append_line

path = sys.argv[1]
while True:
    append_line(path, f"tick {os.getpid()}")
    print(f"tick from {os.getpid()}", flush=True)
    time.sleep(0.1)
