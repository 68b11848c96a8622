"""A function worker that is slow to get ready: importing it waits until $READY_FILE exists (as a
worker loading a model or warming a cache would), then appends "api ready" to $ORDER_FILE.
Until then its runner has published no snapshot, so its health port's /ready answers 503."""

from __future__ import annotations

import os
import time

from ._common import append_line

_deadline = time.monotonic() + 120
while not os.path.exists(os.environ["READY_FILE"]) and time.monotonic() < _deadline:
    time.sleep(0.02)
append_line(os.environ["ORDER_FILE"], "api ready")


def work() -> None:
    """An iteration that does nothing."""
