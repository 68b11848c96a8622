"""Colours on a terminal: when to use them and the few the CLI paints.

One rule for every command (the one most terminal tools follow):

- ``NO_COLOR`` set to anything but the empty string: never colour.
- else ``FORCE_COLOR`` set to anything but ``""`` or ``0``: always colour,
  even into a pipe (for ``less -R``, or a CI log that renders ANSI).
- else colour only when the stream is a terminal and ``TERM`` is not
  ``dumb``.

A table is laid out on the plain text and painted afterwards, so colour
codes never push its columns out of line. Standard library only (``os``),
so it costs the CLI nothing to import.
"""

from __future__ import annotations

import os
import sys
from typing import TextIO

RESET = "\033[0m"
RED = "\033[31m"
GREEN = "\033[32m"
YELLOW = "\033[33m"
BLUE = "\033[34m"
MAGENTA = "\033[35m"
DIM = "\033[2m"
BOLD_RED = "\033[1;31m"

#: A worker's state in ``status`` (and a ``ps`` row's), by how much it wants a look.
STATE_COLOURS = {
    "running": GREEN,
    "starting": BLUE,
    "backoff": YELLOW,
    "stopping": MAGENTA,
    "stopped": DIM,
    "fatal": BOLD_RED,
    "stale": YELLOW,
    "unconfirmed": YELLOW,
    "healthy": GREEN,
    "unhealthy": BOLD_RED,
    "unreachable": YELLOW,
}


def wanted(stream: TextIO | None = None) -> bool:
    """Whether to colour what goes to ``stream`` (stdout by default): see the module docstring."""
    if os.environ.get("NO_COLOR", ""):
        return False
    force = os.environ.get("FORCE_COLOR", "")
    if force and force != "0":
        return True
    stream = sys.stdout if stream is None else stream
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):  # a closed or unusual stream
        return False
    return tty and os.environ.get("TERM", "") != "dumb"


def paint(text: str, colour: str | None, *, on: bool) -> str:
    """``text`` in ``colour`` when ``on`` (and a colour is given), else as it is."""
    return f"{colour}{text}{RESET}" if on and colour else text


def state(text: str, *, on: bool) -> str:
    """A state word (``running``, ``fatal``...) painted in its colour; padding spaces stay outside."""
    word = text.rstrip()
    return paint(word, STATE_COLOURS.get(word), on=on) + text[len(word) :]


def error(line: str) -> None:
    """Write one error line to stderr, red on a terminal."""
    sys.stderr.write(paint(line.rstrip("\n"), RED, on=wanted(sys.stderr)) + "\n")
