"""Snapshots handed from the worker to whoever answers its HTTP, through shared memory.

The worker's publisher writes the latest :class:`WorkerSnapshot` (as JSON)
into a small shared mapping a few times a second; the reader answers probes
from it on each request: the responder process of a standalone worker, or,
under ``procguard up``, the supervisor itself (which creates the mapping and
hands it down at spawn). Both read it through :class:`PublishedView`, which
ages the snapshot to now and reports a worker that stopped publishing.
Neither side ever waits for the other: the write is guarded by a sequence
counter (a seqlock: odd while writing, even when done), and a reader that
sees the counter odd or changed under it simply retries, or keeps the last
complete snapshot it read.

Layout (little-endian)::

    0   4s  magic b"PGH1"
    8   Q   sequence (odd = write in progress)
    16  d   published_at, time.monotonic() of the writer (CLOCK_MONOTONIC,
            which is the same clock in every process of the machine)
    24  I   payload length
    32  ... payload (UTF-8 JSON of the snapshot's fields)
"""

from __future__ import annotations

import dataclasses
import json
import mmap
import os
import struct
import time
from dataclasses import dataclass
from typing import Any

from ..snapshot import CircuitSnapshot, HealthStatus, WorkerSnapshot

MAGIC = b"PGH1"
HEADER = 32
#: Size of the shared mapping; a snapshot is well under 2 KiB.
DEFAULT_SIZE = 64 * 1024
#: Longest reason string carried (longer ones are cut).
MAX_REASON = 500
#: How often the worker publishes a fresh snapshot (and at once on a state change).
PUBLISH_INTERVAL_S = 0.25
#: A snapshot older than this reads as "no update from worker" (503 on /health and /ready).
STALE_AFTER_S = 5.0

_SEQ = struct.Struct("<Q")
_META = struct.Struct("<dI")


def encode_snapshot(snapshot: WorkerSnapshot) -> bytes:
    """The JSON payload for ``snapshot``; reasons are cut to :data:`MAX_REASON` characters."""
    fields = {f.name: getattr(snapshot, f.name) for f in dataclasses.fields(snapshot)}
    for key in ("health", "ready"):
        status: HealthStatus = fields[key]
        fields[key] = {"is_healthy": status.is_healthy, "reason": status.reason[:MAX_REASON]}
    fields["circuits"] = [circuit._asdict() for circuit in snapshot.circuits]  # by name: versions may differ
    return json.dumps(fields, separators=(",", ":")).encode()


_KNOWN = frozenset(f.name for f in dataclasses.fields(WorkerSnapshot))
_KNOWN_CIRCUIT = frozenset(CircuitSnapshot._fields)


def decode_snapshot(payload: bytes) -> WorkerSnapshot:
    """Inverse of :func:`encode_snapshot`; unknown keys are ignored."""
    fields: dict[str, Any] = {k: v for k, v in json.loads(payload).items() if k in _KNOWN}
    fields["health"] = HealthStatus(**fields["health"])
    fields["ready"] = HealthStatus(**fields["ready"])
    fields["circuits"] = tuple(
        CircuitSnapshot(**{k: v for k, v in circuit.items() if k in _KNOWN_CIRCUIT})
        for circuit in fields.get("circuits", ())
    )
    fields["gauges"] = tuple((str(name), float(value)) for name, value in fields.get("gauges", ()))
    return WorkerSnapshot(**fields)


def create_buffer(size: int = DEFAULT_SIZE) -> tuple[int, mmap.mmap]:
    """A new shared mapping with the header written: ``(fd, mapping)``.

    The descriptor is not inheritable (hand it to one child with
    ``pass_fds``) and belongs to the caller, who closes it once the child
    has it; the mapping stays valid after that. A memfd where the system
    has one, else an unlinked temporary file.
    """
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("procguard-health", os.MFD_CLOEXEC)
    else:  # pragma: no cover - systems without memfd
        import tempfile

        with tempfile.TemporaryFile() as backing:
            fd = os.dup(backing.fileno())
    try:
        os.ftruncate(fd, size)
        buffer = mmap.mmap(fd, size)
    except BaseException:
        os.close(fd)
        raise
    buffer[0:4] = MAGIC
    return fd, buffer


class SnapshotPublisher:
    """The writing side. One writer only (callers serialise with a lock)."""

    def __init__(self, buffer: mmap.mmap) -> None:
        self._buf = buffer
        self._capacity = len(buffer) - HEADER
        self._seq = 0
        buffer[0:4] = MAGIC

    def publish(self, payload: bytes, published_at: float | None = None) -> bool:
        """Write ``payload``; False (nothing written) when it does not fit."""
        if len(payload) > self._capacity:
            return False
        when = time.monotonic() if published_at is None else published_at
        buf = self._buf
        self._seq += 1
        _SEQ.pack_into(buf, 8, self._seq)  # odd: readers keep off
        buf[HEADER : HEADER + len(payload)] = payload
        _META.pack_into(buf, 16, when, len(payload))
        self._seq += 1
        _SEQ.pack_into(buf, 8, self._seq)
        return True


@dataclass(frozen=True)
class Published:
    sequence: int
    published_at: float
    payload: bytes


class SnapshotReader:
    """The reading side: :meth:`read` returns the latest complete write or None."""

    def __init__(self, buffer: mmap.mmap) -> None:
        if buffer[0:4] != MAGIC:
            msg = "shared snapshot buffer has no procguard header"
            raise ValueError(msg)
        self._buf = buffer
        self._capacity = len(buffer) - HEADER

    def read(self, attempts: int = 50) -> Published | None:
        buf = self._buf
        for _ in range(attempts):
            (seq,) = _SEQ.unpack_from(buf, 8)
            if seq == 0:
                return None  # nothing published yet
            if seq & 1:
                time.sleep(0)  # a write is in progress: let the writer finish
                continue
            when, length = _META.unpack_from(buf, 16)
            if length > self._capacity:
                continue
            payload = bytes(buf[HEADER : HEADER + length])
            (again,) = _SEQ.unpack_from(buf, 8)
            if again == seq:
                return Published(seq, when, payload)
        return None


def age_snapshot(snap: WorkerSnapshot, age: float, stale_after_s: float) -> WorkerSnapshot:
    """``snap`` as it stands ``age`` seconds after it was taken (unhealthy once stale)."""
    if age <= 0:
        return snap
    changes: dict[str, Any] = {"uptime_seconds": snap.uptime_seconds + age}
    if snap.heartbeat_age_seconds is not None:
        changes["heartbeat_age_seconds"] = snap.heartbeat_age_seconds + age
    if snap.remaining_seconds is not None:
        changes["remaining_seconds"] = max(0.0, snap.remaining_seconds - age)
    if any(c.retry_in_seconds is not None for c in snap.circuits):
        changes["circuits"] = tuple(
            c if c.retry_in_seconds is None else c._replace(retry_in_seconds=_less(c.retry_in_seconds, age))
            for c in snap.circuits
        )
    if age > stale_after_s:
        stale = HealthStatus(False, f"no update from worker for {age:.1f} s (hung or holding the GIL)")
        changes["health"] = stale
        changes["ready"] = stale
    return dataclasses.replace(snap, **changes)


def _less(seconds: float, age: float) -> float:
    return max(0.0, seconds - age)


class PublishedView:
    """The snapshot to answer with: the latest published one, aged to now.

    What a reader of the mapping answers when the worker cannot publish
    (stuck in C code holding the GIL, stopped, swapping): once the latest
    snapshot is older than ``stale_after_s``, its health and readiness are
    ``"no update from worker for N s"``, rather than the last verdict the
    worker published; its times (uptime, heartbeat age, remaining runtime)
    are advanced by the snapshot's age, so they stay true.

    Safe to call from several threads at once (under ``procguard up`` the
    HTTP thread and the liveness prober read the same view): the decoded
    snapshot is kept as one value, swapped whole.
    """

    def __init__(self, reader: SnapshotReader, stale_after_s: float = STALE_AFTER_S) -> None:
        self._reader = reader
        self._stale_after_s = stale_after_s
        self._decoded: tuple[int, float, WorkerSnapshot] | None = None  # (sequence, published_at, snapshot)

    def current(self) -> WorkerSnapshot:
        """The latest snapshot aged to now; LookupError when none was published yet."""
        latest = self._reader.read()
        decoded = self._decoded
        if latest is not None and (decoded is None or decoded[0] != latest.sequence):
            decoded = (latest.sequence, latest.published_at, decode_snapshot(latest.payload))
            self._decoded = decoded
        if decoded is None:
            msg = "no snapshot published yet"
            raise LookupError(msg)
        _sequence, published_at, snapshot = decoded
        return age_snapshot(snapshot, time.monotonic() - published_at, self._stale_after_s)

    def fresh_gauges(self) -> dict[str, float] | None:
        """The program's gauges as last published, or None when nothing was published or it is stale.

        What an autoscaler reads: a worker that stopped publishing (hung,
        stopped) has no known value, rather than its last one.
        """
        try:
            snapshot = self.current()
        except LookupError:
            return None
        decoded = self._decoded
        if decoded is None or time.monotonic() - decoded[1] > self._stale_after_s:
            return None
        return dict(snapshot.gauges)
