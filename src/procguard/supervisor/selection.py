"""Which workers a command means: ``all``, exact names and shell-style patterns.

Every command that takes worker names (``up``, ``start``, ``stop``,
``restart``, ``signal``, ``logs``) turns them into workers here, and only
here, so that a new way of naming workers is added in one place. The rule:

- ``all`` is every worker;
- a name with ``*``, ``?`` or ``[`` is a shell pattern (:func:`fnmatch.fnmatchcase`,
  case-sensitive like the names themselves): ``'coll*'``, ``'w?'``;
- anything else is a worker's exact name.

Each word must match at least one worker; one that matches none is a
:class:`~procguard.errors.UsageError` (exit status 2) naming it and listing
the workers there are, and the command does nothing. The result keeps the
order of the known names (the order of ``procguard.toml``), each worker once.
Pure: no file, no process.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence

from ..errors import UsageError, shown

#: The word that selects every worker.
ALL = "all"

#: A pattern is made of name characters and the shell's wildcards.
_PATTERN_RE = re.compile(r"[A-Za-z0-9_*?\[\]!-]{1,200}\Z")
_WILDCARDS = frozenset("*?[")

#: How a selection may be written, for help texts and messages.
ACCEPTED = "a worker name, 'all', or a shell pattern such as 'coll*'"


def is_pattern(word: str) -> bool:
    """True when ``word`` selects by wildcard (or is ``all``) rather than naming one worker."""
    return word == ALL or any(char in _WILDCARDS for char in word)


def check_words(words: Sequence[str]) -> None:
    """UsageError for a word that can be neither a worker name nor a pattern (before any lookup)."""
    for word in words:
        if not _PATTERN_RE.match(word):
            msg = f"worker {shown(word)} is not a valid name or pattern (use {ACCEPTED})"
            raise UsageError(msg)


def select(words: Sequence[str], known: Sequence[str]) -> list[str]:
    """The workers of ``known`` that ``words`` select, in the order of ``known``, each once.

    Raises :class:`UsageError` for the first word that selects nothing,
    naming it and listing ``known``.
    """
    check_words(words)
    chosen: set[str] = set()
    listed = ", ".join(known) or "none"
    for word in words:
        if word == ALL:
            hits = list(known)
        elif is_pattern(word):
            hits = [name for name in known if fnmatch.fnmatchcase(name, word)]
        else:
            hits = [word] if word in known else []
        if not hits:
            what = "no worker matches" if is_pattern(word) else "unknown worker"
            msg = f"{what} {shown(word)} (use one of: {listed})"
            raise UsageError(msg)
        chosen.update(hits)
    return [name for name in known if name in chosen]
