"""Prints "WORD N" for N = 1, 2, ... every INTERVAL_S seconds. Usage: sayer.py WORD INTERVAL_S"""

import sys
import time

word, interval = sys.argv[1], float(sys.argv[2])
count = 0
while True:
    count += 1
    print(f"{word} {count}", flush=True)
    time.sleep(interval)
