"""``env_file``: variables read from a dotenv file, the format docker, compose, honcho and systemd read.

One variable a line, ``NAME=value``:

- blank lines and lines starting with ``#`` are skipped; an ``export``
  prefix is allowed (a file that a shell can also ``source``);
- an unquoted value is taken up to a `` #`` comment, spaces around it
  trimmed;
- ``'single quotes'`` keep the text as is; ``"double quotes"`` understand
  ``\\n``, ``\\t``, ``\\"``, ``\\\\`` and may span lines;
- nothing is expanded (``$OTHER`` stays as written): the value in the file
  is the value the worker gets, whatever the environment procguard runs in.

A line that is none of these is an error naming the file, the line and
what is accepted: procguard refuses the whole config rather than start a
worker with half its environment.
"""

from __future__ import annotations

import re

from .errors import UsageError, shown

_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "$": "$"}
ACCEPTED = "use NAME=value lines, # comments, an optional export prefix"


def parse_dotenv(text: str, *, where: str) -> dict[str, str]:
    """The variables of a dotenv file's ``text`` (``where`` names it in errors), in file order.

    A name given twice keeps its last value, as a shell sourcing the file would.
    """
    env: dict[str, str] = {}
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        number = index + 1
        line = lines[index].strip()
        index += 1
        if not line or line.startswith("#"):
            continue
        if line.startswith("export ") or line.startswith("export\t"):
            line = line[len("export") :].lstrip()
        name, sep, rest = line.partition("=")
        name = name.strip()
        if not sep or not _NAME_RE.match(name):
            msg = f"{where} line {number}: {shown(lines[number - 1])} is not a NAME=value line ({ACCEPTED})"
            raise UsageError(msg)
        rest = rest.strip()
        if rest.startswith("'"):
            value, tail = _single(rest, where=where, number=number)
        elif rest.startswith('"'):
            value, tail, index = _double(rest, lines, index, where=where, number=number)
        else:
            value, _, _comment = rest.partition(" #")
            value, tail = value.strip(), ""
        if tail and not tail.lstrip().startswith("#"):
            msg = f"{where} line {number}: {shown(tail.strip())} after the closing quote ({ACCEPTED})"
            raise UsageError(msg)
        if "\x00" in value:
            raise UsageError(f"{where} line {number}: the value of {name} contains a NUL character")
        env[name] = value
    return env


def _single(rest: str, *, where: str, number: int) -> tuple[str, str]:
    end = rest.find("'", 1)
    if end < 0:
        raise UsageError(f"{where} line {number}: the single quote is never closed ({ACCEPTED})")
    return rest[1:end], rest[end + 1 :]


def _double(rest: str, lines: list[str], index: int, *, where: str, number: int) -> tuple[str, str, int]:
    """The double-quoted value starting ``rest`` (it may go on over the next lines)."""
    out: list[str] = []
    text, pos = rest, 1
    while True:
        while pos < len(text):
            char = text[pos]
            if char == "\\" and pos + 1 < len(text):
                following = text[pos + 1]
                out.append(_ESCAPES.get(following, "\\" + following))
                pos += 2
                continue
            if char == '"':
                return "".join(out), text[pos + 1 :], index
            out.append(char)
            pos += 1
        if index >= len(lines):
            raise UsageError(f"{where} line {number}: the double quote is never closed ({ACCEPTED})")
        out.append("\n")
        text, pos = lines[index], 0
        index += 1
