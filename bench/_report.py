"""Shared by every benchmark: where the figures go and what machine made them.

Each benchmark owns one section of docs/benchmarks.md, delimited by
``<!-- bench:NAME -->`` / ``<!-- /bench:NAME -->`` markers, and replaces only
that section, under a lock, so benchmarks run side by side never lose each
other's figures.
"""

from __future__ import annotations

import fcntl
import os
import platform
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"

_HEADER = "# Benchmarks\n\nFigures measured by the scripts under bench/; each section names its script.\n"


def write_section(name: str, markdown: str, *, doc: Path = DOC) -> None:
    """Replace (or append) the ``<!-- bench:NAME -->`` section of docs/benchmarks.md."""
    begin, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{begin}\n{markdown.rstrip()}\n{end}\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    with open(doc, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        text = f.read()
        if begin in text and end in text:
            head, rest = text.split(begin, 1)
            tail = rest.split(end, 1)[1].lstrip("\n")
            text = head + block + ("\n" + tail if tail else "")
        else:
            if not text.strip():
                text = _HEADER
            text = text.rstrip("\n") + "\n\n" + block
        f.seek(0)
        f.truncate()
        f.write(text)


def machine() -> str:
    """One line naming the machine, for the top of a section."""
    return f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
