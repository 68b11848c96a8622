"""Enqueue a burst of jobs through the API and watch the queue drain.

    python -m examples.analyticbot.burst 2000            # enqueue 2,000 jobs, follow the depth
    python -m examples.analyticbot.burst 2000 --no-wait  # enqueue and return

With the stack up (``make demo``), ``procguard status -c examples/analyticbot/procguard.toml``
shows the ``jobs`` worker's copies grow to its autoscale max while the depth is
high, and go back to 1 once the queue has stayed empty for scale_down_after.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from . import settings


def call(url: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return dict(json.load(response))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="analyticbot-burst", description=__doc__.splitlines()[0])
    parser.add_argument("count", type=int, help="jobs to enqueue")
    parser.add_argument("--api-url", help="the API (default: $ANALYTICBOT_API_URL or http://127.0.0.1:8081)")
    parser.add_argument("--no-wait", action="store_true", help="return once enqueued")
    args = parser.parse_args(argv)
    url = settings.api_url(args.api_url) + "/api/jobs"
    try:
        reply = call(url, {"count": args.count})
        print(f"enqueued {reply['enqueued']}; depth {reply['depth']}", flush=True)
        started = time.monotonic()
        while not args.no_wait and reply["depth"] > 0:
            time.sleep(1)
            reply = call(url)
            elapsed = time.monotonic() - started
            print(f"{elapsed:5.1f} s  depth {reply['depth']:6d}  done {reply['done']}", flush=True)
    except (urllib.error.URLError, OSError) as error:
        print(f"analyticbot-burst: cannot reach {url}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
