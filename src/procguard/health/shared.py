"""Snapshots handed from the worker to its responder process through shared memory.

The worker's publisher writes the latest :class:`WorkerSnapshot` (as JSON)
into a small shared mapping a few times a second; the responder process
reads it on each request. Neither side ever waits for the other: the write
is guarded by a sequence counter (a seqlock: odd while writing, even when
done), and a reader that sees the counter odd or changed under it simply
retries, or keeps the last complete snapshot it read.

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
import struct
import time
from dataclasses import dataclass
from typing import Any

from ..snapshot import HealthStatus, WorkerSnapshot

MAGIC = b"PGH1"
HEADER = 32
#: Size of the shared mapping; a snapshot is well under 2 KiB.
DEFAULT_SIZE = 64 * 1024
#: Longest reason string carried (longer ones are cut).
MAX_REASON = 500

_SEQ = struct.Struct("<Q")
_META = struct.Struct("<dI")


def encode_snapshot(snapshot: WorkerSnapshot) -> bytes:
    """The JSON payload for ``snapshot``; reasons are cut to :data:`MAX_REASON` characters."""
    fields = {f.name: getattr(snapshot, f.name) for f in dataclasses.fields(snapshot)}
    for key in ("health", "ready"):
        status: HealthStatus = fields[key]
        fields[key] = {"is_healthy": status.is_healthy, "reason": status.reason[:MAX_REASON]}
    return json.dumps(fields, separators=(",", ":")).encode()


_KNOWN = frozenset(f.name for f in dataclasses.fields(WorkerSnapshot))


def decode_snapshot(payload: bytes) -> WorkerSnapshot:
    """Inverse of :func:`encode_snapshot`; unknown keys are ignored."""
    fields: dict[str, Any] = {k: v for k, v in json.loads(payload).items() if k in _KNOWN}
    fields["health"] = HealthStatus(**fields["health"])
    fields["ready"] = HealthStatus(**fields["ready"])
    return WorkerSnapshot(**fields)


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
