"""Records its start in FILE, then exits with STATUS. Usage: crash.py FILE [STATUS] [DELAY_S]"""

import os
import sys
import time

from _common import append_line

path = sys.argv[1]
status = int(sys.argv[2]) if len(sys.argv) > 2 else 3
delay = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
append_line(path, f"start {os.getpid()} {time.time():.6f}")
print(f"crashing with status {status}", flush=True)
time.sleep(delay)
sys.exit(status)
