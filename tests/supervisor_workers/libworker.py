"""A library worker: ``ProcessManager(name=NAME)`` idling in its loop. Usage: libworker.py NAME

No limits, so it runs until stopped; the manager takes the single-instance
lock of NAME in the state directory its environment names.
"""

import sys

from procguard import ProcessManager

manager = ProcessManager(name=sys.argv[1], max_runtime_hours=0, memory_limit_mb=0, cpu_limit_percent=0)
manager.start()
while manager.should_continue():
    manager.heartbeat()
    manager.sleep(3600)
raise SystemExit(manager.shutdown())
