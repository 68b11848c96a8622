"""The emergency exit: end the process at once, from any thread, leaving no child behind.

The manager's monitor thread uses it in the three cases where waiting for the
work loop is not an option (the hard memory ceiling, a second stop signal,
a graceful stop that overran its grace period). ``sys.exit`` from a thread
only ends that thread, so this is ``os._exit``: no cleanup callbacks, no
atexit handlers. What it does first, because ``os._exit`` skips it: SIGKILL
the descendants (they would otherwise be orphaned) and flush the log handlers
and standard streams (so the reason is not lost).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from .outcome import StopOutcome
    from .sampler import ResourceSampler

log = logging.getLogger(__name__)


def exit_now(
    outcome: StopOutcome,
    *,
    label: str,
    pid: int,
    sampler: ResourceSampler | None,
    report: Callable[[StopOutcome], None] | None = None,
) -> NoReturn:
    """Log ``outcome``, SIGKILL the descendants ``sampler`` knows of, report, flush, exit with its status.

    ``sampler`` rescans the tree first (a child started since the last sample
    is killed too); without one no descendant is signalled. pid <= 1 and
    ``pid`` itself are never signalled. ``report`` (the supervisor's link)
    hears the outcome before the process ends.
    """
    status = outcome.exit_status if outcome.exit_status is not None else 1
    log.critical("%s (pid %d) stopped at once: %s", label, pid, outcome.summary())
    try:
        kids = sampler.descendants(rescan=True) if sampler is not None else ()
    except Exception:
        kids = ()
    for kid in kids:
        if kid > 1 and kid != pid:
            try:
                os.kill(kid, signal.SIGKILL)
            except OSError:
                pass
    if report is not None:
        try:
            report(outcome)
        except Exception:
            pass
    for handler in logging.getLogger().handlers:
        try:
            handler.flush()
        except Exception:
            pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(status)
