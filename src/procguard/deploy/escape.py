"""Escaping filters, one per target format, so no value can inject a directive.

Every string that reaches a generated file goes through one of these. Each
filter either returns text that the engine reads back as exactly the
original value, or raises :class:`~procguard.errors.UsageError` naming the
value and why the format cannot carry it (supervisord's INI has no way to
write a newline inside a value, for instance). JSON/YAML output needs no
filter here: it is produced by ``json.dumps``.
"""

from __future__ import annotations

import re

from ..errors import UsageError

_SYSTEMD_SAFE = re.compile(r"[A-Za-z0-9_./:=,+@-]+\Z")
_SHELL_SAFE = re.compile(r"[A-Za-z0-9_./:=,+@%-]+\Z")


def _c_escape(text: str) -> str:
    """Backslash-escape for the inside of a systemd double-quoted word."""
    out: list[str] = []
    for char in text:
        if char == "\\":
            out.append("\\\\")
        elif char == '"':
            out.append('\\"')
        elif char == "\n":
            out.append("\\n")
        elif char == "\t":
            out.append("\\t")
        elif char == "\r":
            out.append("\\r")
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\x{ord(char):02x}")
        else:
            out.append(char)
    return "".join(out)


def systemd_specifiers(text: str) -> str:
    """Escape systemd's ``%`` specifiers (``%n``, ``%h``...): ``%`` -> ``%%``."""
    return text.replace("%", "%%")


def systemd_exec_word(word: str) -> str:
    """One word of ``ExecStart=``: specifiers, ``$`` expansion and quoting escaped.

    systemd expands ``$VAR`` in command lines (``$$`` is a literal ``$``), ``%``
    specifiers (``%%``), unquotes ``"..."`` with C escapes, and treats a bare
    ``;`` as a command separator; a word with anything beyond a safe set is
    double-quoted.
    """
    _reject_nul(word, "a command-line word")
    escaped = systemd_specifiers(word).replace("$", "$$")
    if _SYSTEMD_SAFE.match(word):
        return escaped
    return f'"{_c_escape(escaped)}"'


def systemd_exec_line(argv: list[str]) -> str:
    """A whole ``ExecStart=`` value; ``argv[0]`` must be an absolute path."""
    if not argv or not argv[0].startswith("/"):
        msg = f"systemd needs an absolute path to the program, got {argv[:1]!r} (use --venv PATH)"
        raise UsageError(msg)
    return " ".join(systemd_exec_word(word) for word in argv)


def systemd_environment(name: str, value: str) -> str:
    """One ``Environment=`` value: ``"NAME=value"`` with quotes, C escapes and ``%%``."""
    _reject_nul(value, f"environment variable {name}")
    return f'"{_c_escape(systemd_specifiers(f"{name}={value}"))}"'


def systemd_path(path: str, what: str) -> str:
    """A path setting (``WorkingDirectory=``): absolute, no control characters, ``%%``."""
    if not path.startswith("/"):
        msg = f"{what}: {path!r} is not an absolute path (systemd needs one)"
        raise UsageError(msg)
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path) or any(c.isspace() for c in path):
        msg = f"{what}: {path!r} contains whitespace or control characters (systemd cannot use it here)"
        raise UsageError(msg)
    return systemd_specifiers(path)


def systemd_text(text: str) -> str:
    """Free text (``Description=``): one line, specifiers escaped."""
    return systemd_specifiers(" ".join(text.split()))


# --- supervisord -----------------------------------------------------------


def _ini_safe(text: str, what: str) -> None:
    _reject_nul(text, what)
    if any(c in text for c in "\r\n") or any(ord(c) < 0x20 and c != "\t" for c in text):
        msg = (
            f"{what}: {text!r} contains a newline or control character"
            " (supervisord's INI format cannot carry it)"
        )
        raise UsageError(msg)


def supervisor_percent(text: str) -> str:
    """Escape supervisord's ``%(name)s`` interpolation: ``%`` -> ``%%``."""
    return text.replace("%", "%%")


def _shell_word(word: str) -> str:
    """POSIX-shell quoting that also never puts ``;`` or ``#`` after whitespace.

    supervisord splits ``command=`` with ``shlex.split`` (POSIX rules), but its
    INI parser first strips inline comments: ``;`` or ``#`` preceded by
    whitespace. Those two characters are therefore written outside the
    single quotes as ``\\;`` / ``\\#``, right after a quote character.
    """
    if word and _SHELL_SAFE.match(word):
        return word
    parts = re.split(r"([;#])", word)
    out: list[str] = []
    for part in parts:
        if part in (";", "#"):
            out.append("\\" + part)
        elif part:
            out.append("'" + part.replace("'", "'\"'\"'") + "'")
    return "".join(out) or "''"


def supervisor_command(argv: list[str], what: str) -> str:
    """A ``command=`` value read back by supervisord as exactly ``argv``."""
    for word in argv:
        _ini_safe(word, what)
    return supervisor_percent(" ".join(_shell_word(word) for word in argv))


def supervisor_environment(env: dict[str, str], what: str) -> str:
    """An ``environment=`` value: ``KEY="value",KEY2='value2'``.

    supervisord parses it with non-POSIX ``shlex`` (no escapes inside quotes)
    and strips quote characters from both ends of each value, so a value that
    contains both quote kinds, starts or ends with a quote, or has ``;``/``#``
    after whitespace cannot be written; those are refused with a message.
    """
    items: list[str] = []
    for name, value in env.items():
        label = f"{what}: environment variable {name}"
        _ini_safe(value, label)
        if value[:1] in ("'", '"') or value[-1:] in ("'", '"') or ('"' in value and "'" in value):
            msg = (
                f"{label}: {value!r} cannot be written for supervisord"
                " (quote characters at its ends or of both kinds)"
            )
            raise UsageError(msg)
        if re.search(r"\s[;#]", value):
            msg = (
                f"{label}: {value!r} cannot be written for supervisord"
                " (';' or '#' after whitespace starts a comment)"
            )
            raise UsageError(msg)
        quote = "'" if '"' in value else '"'
        items.append(f"{name}={quote}{supervisor_percent(value)}{quote}")
    return ",".join(items)


def supervisor_value(text: str, what: str) -> str:
    """A plain single-line value (paths, user names) for supervisord's INI."""
    _ini_safe(text, what)
    if re.search(r"\s[;#]", text) or text != text.strip():
        msg = (
            f"{what}: {text!r} cannot be written for supervisord"
            " (surrounding whitespace or a comment character)"
        )
        raise UsageError(msg)
    return supervisor_percent(text)


def _reject_nul(text: str, what: str) -> None:
    if "\x00" in text:
        msg = f"{what}: {text!r} contains a NUL character (not accepted)"
        raise UsageError(msg)
