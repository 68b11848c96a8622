"""A worker whose graceful stop takes 0.5 s (``--stop-delay``): the stop-time scenario."""

from __future__ import annotations

import sys

import _events as ev

if __name__ == "__main__":
    args = ev.parse_common(sys.argv[1:])
    ev.open_log(args["events"], "worker")
    ev.on_stop_signals(delay_s=float(args.get("stop-delay", "0.5")))
    ev.log("ready", name=args.get("name", ""))
    ev.sleep_forever()
