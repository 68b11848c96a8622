"""The shared-memory hand-off between a worker and its reader (responder process or supervisor)."""

from __future__ import annotations

import json
import mmap
import os
import struct
import time
from dataclasses import fields

import pytest

from procguard.health.shared import (
    DEFAULT_SIZE,
    PublishedView,
    SnapshotPublisher,
    SnapshotReader,
    age_snapshot,
    decode_snapshot,
    encode_snapshot,
)
from procguard.snapshot import HealthStatus, WorkerSnapshot

from .conftest import Spawn
from .helpers import PYTHON, wait_for


def full_snapshot() -> WorkerSnapshot:
    return WorkerSnapshot(
        name="w", pid=12, health=HealthStatus(False, "x" * 2000), ready=HealthStatus(True, "ready"),
        started=True, stopping=True, uptime_seconds=1.5, cpu_percent=12.5, memory_bytes=1234,
        memory_percent=0.5, num_threads=3, num_children=1, heartbeat_age_seconds=0.25, iterations=7,
        failed_iterations=2, max_iterations=9, max_runtime_seconds=60.0, remaining_seconds=58.5,
        memory_limit_bytes=4096, cpu_limit_percent=80.0, stop_reason="signal",
        stack="analyticbot", start_time_seconds=1_700_000_000.5,
    )


def test_encode_decode_roundtrip_covers_every_field() -> None:
    snap = full_snapshot()
    back = decode_snapshot(encode_snapshot(snap))
    for f in fields(WorkerSnapshot):
        if f.name != "health":
            assert getattr(back, f.name) == getattr(snap, f.name), f.name
    assert back.health.is_healthy is False and len(back.health.reason) == 500  # cut, not dropped


def test_decode_ignores_unknown_keys() -> None:
    doc = json.loads(encode_snapshot(full_snapshot()))
    doc["from_a_newer_version"] = 1
    assert decode_snapshot(json.dumps(doc).encode()).pid == 12


def new_buffer() -> mmap.mmap:
    return mmap.mmap(-1, DEFAULT_SIZE)


def test_reader_sees_nothing_before_the_first_publish_and_the_latest_after() -> None:
    buf = new_buffer()
    publisher = SnapshotPublisher(buf)
    reader = SnapshotReader(buf)
    assert reader.read() is None
    publisher.publish(b'{"a":1}', published_at=5.0)
    publisher.publish(b'{"a":2}', published_at=6.0)
    got = reader.read()
    assert got is not None and (got.payload, got.published_at, got.sequence) == (b'{"a":2}', 6.0, 4)
    assert publisher.publish(b"x" * DEFAULT_SIZE) is False  # too big: refused, old value kept
    assert reader.read().payload == b'{"a":2}'  # type: ignore[union-attr]


def test_reader_gives_up_on_a_write_left_half_done() -> None:
    buf = new_buffer()
    SnapshotPublisher(buf).publish(b"{}")
    struct.pack_into("<Q", buf, 8, 3)  # odd: a writer stopped mid-write (e.g. SIGSTOPped)
    assert SnapshotReader(buf).read(attempts=5) is None


def test_reader_refuses_a_foreign_buffer() -> None:
    with pytest.raises(ValueError, match="procguard"):
        SnapshotReader(new_buffer())


WRITER = r"""
import mmap, os, sys
from procguard.health.shared import SnapshotPublisher
fd = int(sys.argv[1])
buf = mmap.mmap(fd, int(sys.argv[2]))
publisher = SnapshotPublisher(buf)
payloads = [b'{"n":%d,"pad":"%s"}' % (i, b"x" * (i * 97 % 3000)) for i in range(50)]
print("go", flush=True)
i = 0
while True:
    publisher.publish(payloads[i % 50])
    i += 1
"""


def test_no_torn_read_against_a_writer_in_another_process(spawn: Spawn) -> None:
    fd = os.memfd_create("test-health")
    try:
        os.ftruncate(fd, DEFAULT_SIZE)
        buf = mmap.mmap(fd, DEFAULT_SIZE)
        proc = spawn([PYTHON, "-c", WRITER, str(fd), str(DEFAULT_SIZE)], pass_fds=(fd,))
        assert proc.stdout is not None and proc.stdout.readline() == b"go\n"
        reader = SnapshotReader(buf)
        sequences = set()
        deadline = time.monotonic() + 1.0
        reads = 0
        while time.monotonic() < deadline or reads < 2000:
            got = reader.read()
            if got is None:
                continue
            reads += 1
            doc = json.loads(got.payload)  # a torn payload would not parse or not match
            assert doc["pad"] == "x" * (doc["n"] * 97 % 3000)
            sequences.add(got.sequence)
        assert len(sequences) > 10  # the writer really was writing meanwhile
        proc.kill()
        proc.wait()
        buf.close()
    finally:
        os.close(fd)


def test_age_snapshot_advances_times_and_turns_stale() -> None:
    snap = full_snapshot()
    aged = age_snapshot(snap, 2.0, stale_after_s=5.0)
    assert aged.uptime_seconds == 3.5 and aged.heartbeat_age_seconds == 2.25
    assert aged.remaining_seconds == 56.5
    assert aged.ready == snap.ready  # not stale yet: the worker's own verdicts stand
    stale = age_snapshot(snap, 100.0, stale_after_s=5.0)
    assert stale.remaining_seconds == 0.0
    assert not stale.health.is_healthy and not stale.ready.is_healthy
    assert stale.health.reason.startswith("no update from worker for 100.0 s")
    assert age_snapshot(snap, 0.0, stale_after_s=5.0) is snap


def test_published_view_decodes_each_publish_once_and_ages_it() -> None:
    buf = new_buffer()
    publisher = SnapshotPublisher(buf)
    view = PublishedView(SnapshotReader(buf), stale_after_s=0.5)
    with pytest.raises(LookupError):
        view.current()
    fresh = WorkerSnapshot(name="w", pid=1, health=HealthStatus(True), ready=HealthStatus(True))
    publisher.publish(encode_snapshot(fresh))
    assert view.current().health.is_healthy
    wait_for(lambda: not view.current().health.is_healthy, message="the view to turn stale")
    publisher.publish(encode_snapshot(fresh))
    assert view.current().health.is_healthy
