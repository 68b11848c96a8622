"""Copies of one worker (``instances = N``): their names, ports and environment, in one place.

A worker of ``procguard.toml`` with ``instances = N`` runs as N processes,
each a copy with its own state, restarts, log and history. The rules every
surface follows (``procguard up``, the control commands, ``check`` and the
generated files):

- copy K (from 1) of worker ``X`` is named ``X:K``; a worker declared with
  one copy keeps its plain name ``X`` everywhere (copies that ``procguard
  scale`` adds to it are ``X:2``, ``X:3``...), so nothing changes for a
  stack that does not use copies. ``X:1`` always names the first copy;
- ``X`` on the command line means every copy of ``X``, ``X:K`` one;
- a health port P gives copy K the port P+K-1;
- each copy's environment carries ``PROCGUARD_INSTANCE_INDEX=K`` and
  ``PROCGUARD_INSTANCES=N`` (N: the count when the copy started).

Standard library only: the CLI imports it to read an address.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from .errors import UsageError, shown

#: Most copies a worker may have (``instances``, ``procguard scale``).
MAX_INSTANCES = 64
INSTANCES_ACCEPTED = f"a whole number from 1 to {MAX_INSTANCES}"

INDEX_ENV = "PROCGUARD_INSTANCE_INDEX"
COUNT_ENV = "PROCGUARD_INSTANCES"

_ADDRESS_RE = re.compile(r"(?P<name>[^:]+)(?::(?P<index>[0-9]+))?\Z")


class Address(NamedTuple):
    """What a name on the command line points at: worker ``name``, copy number ``copy`` (None: every copy)."""

    name: str
    copy: int | None = None

    def __str__(self) -> str:
        return self.name if self.copy is None else f"{self.name}:{self.copy}"


def parse_address(text: str) -> Address:
    """``X`` or ``X:K`` (K from 1); UsageError naming the text otherwise."""
    match = _ADDRESS_RE.match(text)
    index = None
    if match is not None and match["index"] is not None:
        index = int(match["index"])
    if match is None or (index is not None and not 1 <= index <= MAX_INSTANCES):
        accepted = f"use NAME, or NAME:K with K from 1 to {MAX_INSTANCES}"
        msg = f"{shown(text)} is not a worker or a copy of one ({accepted})"
        raise UsageError(msg)
    return Address(match["name"], index)


def copy_name(worker: str, index: int, *, plain_first: bool) -> str:
    """The name of copy ``index`` of ``worker``: ``X:K``, or ``X`` for the first copy of a worker
    declared with one copy (``plain_first``)."""
    return worker if plain_first and index == 1 else f"{worker}:{index}"


def copy_port(port: int | None, index: int) -> int | None:
    """The health port of copy ``index`` when the worker's is ``port``: P+K-1."""
    return None if port is None else port + index - 1


def copy_environment(index: int, count: int) -> dict[str, str]:
    """What tells a copy which one it is, in its environment."""
    return {INDEX_ENV: str(index), COUNT_ENV: str(count)}


def parse_count(value: object, *, what: str | None = None) -> int:
    """A number of copies (1..MAX_INSTANCES) from TOML or the command line; UsageError naming the
    value (and ``what``, when given)."""
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.strip().isdigit():
        number = int(value.strip())
    if number is None or not 1 <= number <= MAX_INSTANCES:
        msg = f"{shown(value)} is not a number of copies (use {INSTANCES_ACCEPTED})"
        if what is not None:
            msg = f"{what}: {msg}"
        raise UsageError(msg)
    return number

