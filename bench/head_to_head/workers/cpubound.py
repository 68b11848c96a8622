"""A CPU-bound worker serving a health endpoint from a thread (probe-latency scenario).

``--server procguard``: procguard's own ``ProcessManager`` health server, the
work loop calling ``heartbeat()``/``should_continue()`` between chunks;
``--server prometheus``: prometheus_client's ``start_http_server`` (bound to
127.0.0.1 here; its default is 0.0.0.0). ``--load idle`` sleeps instead of
computing, which gives the unloaded baseline of the same server.
"""

from __future__ import annotations

import sys
import time

import _events as ev


def burn(n: int = 20_000) -> int:
    """Pure-Python arithmetic: holds the GIL the way a CPU-bound worker does."""
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def work(busy: bool) -> None:
    if busy:
        burn()
    else:
        time.sleep(0.01)


if __name__ == "__main__":
    args = ev.parse_common(sys.argv[1:])
    ev.open_log(args["events"], "worker")
    ev.on_stop_signals()
    port = int(args["port"])
    busy = args.get("load", "cpu") == "cpu"
    if args.get("server") == "procguard":
        from procguard import ProcessManager

        manager = ProcessManager(
            name=args.get("name", "probe"), max_runtime_hours=0, memory_limit_mb=0,
            cpu_limit_percent=0, health_port=port, health_host="127.0.0.1", handle_signals=False,
        )
        manager.start()
        ev.log("ready", name=args.get("name", ""), server="procguard")
        while manager.should_continue():
            manager.heartbeat()
            work(busy)
    else:
        from prometheus_client import start_http_server

        start_http_server(port, addr="127.0.0.1")
        ev.log("ready", name=args.get("name", ""), server="prometheus")
        while True:
            work(busy)
