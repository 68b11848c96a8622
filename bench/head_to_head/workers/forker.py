"""A worker with 4 ``multiprocessing`` children (daemon=True, as most code writes them).

The parent keeps Python's default SIGTERM disposition, like a typical worker:
whether its children outlive it depends on the manager, which is the point.
Every process logs ``ready`` in its own event file.
"""

from __future__ import annotations

import multiprocessing
import sys

import _events as ev


def child(events_dir: str, index: int) -> None:
    ev.open_log(events_dir, "child")
    ev.log("ready", index=index)
    ev.sleep_forever()


if __name__ == "__main__":
    args = ev.parse_common(sys.argv[1:])
    ev.open_log(args["events"], "worker")
    children = [
        multiprocessing.Process(target=child, args=(args["events"], i), daemon=True)
        for i in range(int(args.get("children", "4")))
    ]
    for proc in children:
        proc.start()
    ev.log("ready", name=args.get("name", ""), children=[p.pid for p in children])
    ev.sleep_forever()
