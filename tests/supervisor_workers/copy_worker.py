"""One copy of a worker with copies. Usage: copy_worker.py DIR [CHILDREN]

At start it writes DIR/env-K (K: its PROCGUARD_INSTANCE_INDEX) with a JSON
object of its pid and the copy variables, after starting CHILDREN
multiprocessing children (daemon=True, the kind that outlives a SIGKILLed
parent) and one grandchild in a session of its own (out of the copy's
process group), whose pids it lists there too. On SIGTERM it appends
"term K T" to DIR/events, takes 0.3 s to stop, appends "exit K T" and exits
0 (T: CLOCK_MONOTONIC, the same clock in every process).
"""

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time

from _common import append_line, write_atomic

directory = sys.argv[1]
children = int(sys.argv[2]) if len(sys.argv) > 2 else 0
index = os.environ.get("PROCGUARD_INSTANCE_INDEX", "?")
stopping = False


def on_term(_signum: int, _frame: object) -> None:
    global stopping
    stopping = True


def child() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    while True:
        time.sleep(1)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, on_term)
    family: list[int] = []
    if children:
        multiprocessing.set_start_method("fork")
        procs = [multiprocessing.Process(target=child, daemon=True) for _ in range(children)]
        for proc in procs:
            proc.start()
        escaped = subprocess.Popen(
            [sys.executable, "-c", "import time\nwhile True: time.sleep(1)"], start_new_session=True
        )
        family = [p.pid for p in procs if p.pid is not None] + [escaped.pid]
    facts = {
        "pid": os.getpid(),
        "family": family,
        **{k: os.environ.get(k) for k in
           ("PROCGUARD_INSTANCE_INDEX", "PROCGUARD_INSTANCES", "PROCGUARD_INSTANCE", "PROCGUARD_WORKER")},
    }
    write_atomic(os.path.join(directory, f"env-{index}"), json.dumps(facts))
    while not stopping:
        time.sleep(0.02)
    append_line(os.path.join(directory, "events"), f"term {index} {time.monotonic()}")
    time.sleep(0.3)
    append_line(os.path.join(directory, "events"), f"exit {index} {time.monotonic()}")
    sys.exit(0)
