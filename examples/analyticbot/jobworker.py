"""The ``jobs`` worker: consumes the job queue the API fills, as many copies as the queue needs.

Under ``procguard up`` it runs as ``run = "examples.analyticbot.jobworker:consume"``
with ``[workers.jobs.autoscale]``: every iteration takes jobs one at a time
for up to half a second, does each (``ANALYTICBOT_JOB_SECONDS`` of simulated
I/O, 0.02 s by default) and stores its result with :meth:`.jobs.JobQueue.finish`,
and publishes its share of the backlog with ``manager.set_gauge("queue_depth", n)``.
The supervisor sums that gauge over the copies and adds copies at once when
the backlog grows, takes them away (newest first, each drained) once it has
stayed small for ``scale_down_after``.

A stop lets the job in hand finish (procguard stops the loop between
iterations and this function stops taking jobs once a stop is due); the
jobs a copy took and did not finish go back to the queue when it shuts down,
and after the queue's lease if it was killed: every job completes once.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time

from procguard import ProcessManager

from .jobs import JobQueue

#: How long one iteration keeps taking jobs before it returns to procguard's loop.
BATCH_S = 0.5
#: How often the queue's depth is read for the gauge (a query; not once per job).
GAUGE_EVERY_S = 0.2
JOB_SECONDS_ENV = "ANALYTICBOT_JOB_SECONDS"

_state: dict[str, object] = {}


def _queue(manager: ProcessManager) -> tuple[JobQueue, str]:
    """The queue and this consumer's name; the first call registers the release at shutdown."""
    if "queue" not in _state:
        queue = JobQueue.in_data_dir()
        consumer = f"{socket.gethostname()}:{os.getpid()}"
        manager.add_cleanup(lambda: queue.release(consumer))
        _state.update(queue=queue, consumer=consumer)
    return _state["queue"], _state["consumer"]  # type: ignore[return-value]


def do_job(payload: str, seconds: float) -> str:
    """The job itself: a little waiting (the I/O a real job does) and a result to store."""
    time.sleep(seconds)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def consume(manager: ProcessManager) -> None:
    """One iteration: take, do and finish jobs for up to ``BATCH_S``; publish ``queue_depth``."""
    queue, consumer = _queue(manager)
    seconds = float(os.environ.get(JOB_SECONDS_ENV, "0.02"))
    queue.seen(consumer)
    manager.set_gauge("queue_depth", queue.share())
    gauge_at = time.monotonic()
    deadline = gauge_at + BATCH_S
    while not manager.is_stopping and time.monotonic() < deadline:
        job = queue.take(consumer)
        if job is None:
            break
        queue.finish(job, consumer, do_job(job.payload, seconds))
        manager.heartbeat()
        if time.monotonic() - gauge_at >= GAUGE_EVERY_S:
            queue.seen(consumer)
            manager.set_gauge("queue_depth", queue.share())
            gauge_at = time.monotonic()
    manager.set_gauge("queue_depth", queue.share())
