"""Which workers a command means: ``all``, exact names and shell-style patterns.

Every command that takes worker names (``up``, ``start``, ``stop``,
``restart``, ``signal``, ``logs``) turns them into workers here, and only
here, so that a new way of naming workers is added in one place. The rule:

- ``all`` is every worker;
- a name with ``*``, ``?`` or ``[`` is a shell pattern (:func:`fnmatch.fnmatchcase`,
  case-sensitive like the names themselves): ``'coll*'``, ``'w?'``; it selects
  every copy of a worker whose name matches, and a copy whose own name
  (``api:2``) matches;
- ``X:K`` is copy K of worker X (:mod:`procguard.copies`);
- anything else is a worker's exact name: every copy of it.

Each word must match at least one worker; one that matches none is a
:class:`~procguard.errors.UsageError` (exit status 2) naming it and listing
the workers there are, and the command does nothing. The result keeps the
order of the known names (the order of ``procguard.toml``), each worker once.
Pure: no file, no process.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence

from ..copies import parse_address
from ..errors import UsageError, shown

#: The word that selects every worker.
ALL = "all"

#: A pattern is made of name characters and the shell's wildcards.
_PATTERN_RE = re.compile(r"[A-Za-z0-9_*?\[\]!:-]{1,200}\Z")
_WILDCARDS = frozenset("*?[")

#: How a selection may be written, for help texts and messages.
ACCEPTED = "a worker name (every copy of it), one copy NAME:K, 'all', or a shell pattern such as 'coll*'"


def is_pattern(word: str) -> bool:
    """True when ``word`` selects by wildcard (or is ``all``) rather than naming one worker."""
    return word == ALL or any(char in _WILDCARDS for char in word)


def check_words(words: Sequence[str]) -> None:
    """UsageError for a word that can be neither a worker name nor a pattern (before any lookup)."""
    for word in words:
        if not _PATTERN_RE.match(word):
            msg = f"worker {shown(word)} is not a valid name or pattern (use {ACCEPTED})"
            raise UsageError(msg)


def select(
    words: Sequence[str], known: Sequence[str], copies: Mapping[str, tuple[str, int]] | None = None
) -> list[str]:
    """The workers of ``known`` that ``words`` select, in the order of ``known``, each once.

    ``copies`` gives each known name's worker and copy number (``api:2`` ->
    ``("api", 2)``; a worker without copies is ``("X", 1)``); without it every
    name is a worker of its own. Raises :class:`UsageError` for the first
    word that selects nothing, naming it and listing what there is.
    """
    check_words(words)
    of = copies if copies is not None else {name: (name, 1) for name in known}
    groups = list(dict.fromkeys(of[name][0] for name in known))
    chosen: set[str] = set()
    listed = ", ".join(groups) or "none"
    for word in words:
        if word == ALL:
            hits = list(known)
        elif is_pattern(word):
            hits = [n for n in known if fnmatch.fnmatchcase(n, word) or fnmatch.fnmatchcase(of[n][0], word)]
        elif ":" in word:
            address = parse_address(word)
            same = [n for n in known if of[n][0] == address.name]
            hits = [n for n in same if of[n][1] == address.copy]
            if same and not hits:
                have = f"worker {address.name} has {len(same)} (use one of: {', '.join(same)})"
                msg = f"unknown copy {shown(word)}: {have}"
                raise UsageError(msg)
        else:
            hits = [n for n in known if of[n][0] == word]
        if not hits:
            what = "no worker matches" if is_pattern(word) else "unknown worker"
            msg = f"{what} {shown(word)} (use one of: {listed})"
            raise UsageError(msg)
        chosen.update(hits)
    return [name for name in known if name in chosen]
