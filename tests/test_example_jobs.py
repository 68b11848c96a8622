"""The example's job queue: at least once delivery, exactly once completion, survives a restart."""

from __future__ import annotations

import time
from pathlib import Path

from examples.analyticbot.jobs import JobQueue


def test_a_job_a_stopped_consumer_held_goes_back_and_completes_once(tmp_path: Path) -> None:
    queue = JobQueue(tmp_path / "jobs.sqlite3")
    assert queue.enqueue(["a", "b"]) == 2
    first = queue.take("one")
    assert first is not None and first.payload == "a"
    assert queue.counts().depth == 2 and queue.counts().taken == 1
    assert queue.release("one") == 1  # the consumer stops without finishing: the job is queued again
    again = queue.take("two")
    assert again == first
    assert not queue.finish(again, "one", "late")  # a consumer that no longer holds it completes nothing
    assert queue.finish(again, "two", "done")
    assert queue.completions() == {0: 1, 1: 1}


def test_a_killed_consumers_job_returns_after_the_lease(tmp_path: Path) -> None:
    queue = JobQueue(tmp_path / "jobs.sqlite3", lease_s=0.2)
    queue.enqueue(["a"])
    held = queue.take("killed")
    assert held is not None and queue.take("other") is None
    time.sleep(0.3)  # the lease itself is what is tested: it must run out
    assert queue.take("other") == held


def test_jobs_survive_a_new_queue_object_on_the_same_file(tmp_path: Path) -> None:
    JobQueue(tmp_path / "jobs.sqlite3").enqueue(["a", "b", "c"])
    reopened = JobQueue(tmp_path / "jobs.sqlite3")
    assert reopened.counts().queued == 3


def test_each_consumer_publishes_its_share_of_the_backlog(tmp_path: Path) -> None:
    queue = JobQueue(tmp_path / "jobs.sqlite3")
    queue.enqueue([str(i) for i in range(300)])
    queue.seen("one")
    assert queue.share() == 300
    queue.seen("two")
    queue.seen("three")
    assert queue.share() == 100  # three consumers: the shares sum to the backlog
