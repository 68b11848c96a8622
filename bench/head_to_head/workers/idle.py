"""An idle worker: becomes ready, then sleeps until SIGTERM/SIGINT (footprint, restarts, storms)."""

from __future__ import annotations

import sys

import _events as ev

if __name__ == "__main__":
    args = ev.parse_common(sys.argv[1:])
    ev.open_log(args["events"], "worker")
    ev.on_stop_signals()
    ev.log("ready", name=args.get("name", ""))
    ev.sleep_forever()
