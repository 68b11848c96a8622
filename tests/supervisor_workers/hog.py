"""Allocates MB megabytes, records its start in FILE, then idles. Usage: hog.py FILE MB"""

import os
import sys
import time

from _common import append_line

path, megabytes = sys.argv[1], int(sys.argv[2])
block = bytearray(megabytes * 1024 * 1024)
for index in range(0, len(block), 4096):
    block[index] = 1
append_line(path, f"start {os.getpid()}")
while True:
    time.sleep(1)
